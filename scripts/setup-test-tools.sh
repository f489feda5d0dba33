#!/usr/bin/env bash
# Install what the test suite needs beyond the Python packages: Debian's Chromium and
# ChromeDriver (browser tests) and kubectl (kustomize renders the Kubernetes manifests).
# Safe to run again.
set -euo pipefail

debian_packages=(chromium chromium-driver kubectl)
missing=()
for package in "${debian_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup-test-tools.sh: run as root, or install: ${missing[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
