#!/usr/bin/env bash
# Start or stop a local SeaweedFS (master, volume, Filer, S3 gateway) on loopback.
#
# Usage: scripts/start-seaweedfs.sh start DATA_DIR [--filer-port N] [--s3-port N]
#                                   [--master-port N] [--volume-port N] [--bucket NAME]
#        scripts/start-seaweedfs.sh stop DATA_DIR
#        scripts/start-seaweedfs.sh status DATA_DIR
#
# start runs `weed server` in the background with its data, log (weed.log) and pid
# (weed.pid) in DATA_DIR, waits until the Filer accepts a write, creates the bucket
# (default astramolecula) and prints the settings that point peptide-opt at it.
# Ports default to the platform's: Filer 8888, S3 8333, master 9333, volume 8080;
# each gRPC port is its HTTP port + 10000.
#
# S3 authentication: when S3_ACCESS_KEY and S3_SECRET_KEY are set, the gateway accepts
# that one identity (written to DATA_DIR/s3.json) and nothing else. Without them it
# runs without authentication. The Filer API has no authentication: keep it on
# loopback. WEED names the weed program (default: .venv/bin/weed, then PATH).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '2,18p' "$0" >&2
    exit 2
}

find_weed() {
    if [[ -n "${WEED:-}" ]]; then
        echo "$WEED"
    elif [[ -x "$root/.venv/bin/weed" ]]; then
        echo "$root/.venv/bin/weed"
    elif command -v weed >/dev/null; then
        command -v weed
    else
        echo "start-seaweedfs.sh: weed not found; run scripts/setup.sh --test or set WEED" >&2
        exit 1
    fi
}

# A zombie (exited, not yet reaped by its new parent) still passes kill -0.
is_alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ "$state" != Z* ]]
}

running_pid() {
    local pid_file="$1/weed.pid"
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" && echo "$pid"
}

write_s3_config() {
    # json.dumps quotes the keys whatever characters they hold; the secret goes into a
    # file only the current user can read.
    (umask 077 && python3 -c '
import json, os, sys
identity = {
    "name": "peptide-opt",
    "credentials": [
        {"accessKey": os.environ["S3_ACCESS_KEY"], "secretKey": os.environ["S3_SECRET_KEY"]}
    ],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}
with open(sys.argv[1], "w") as handle:
    json.dump({"identities": [identity]}, handle)
' "$1")
}

start() {
    local data_dir="$1"
    shift
    local filer_port=8888 s3_port=8333 master_port=9333 volume_port=8080
    local bucket=astramolecula
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --filer-port) filer_port="$2"; shift 2 ;;
            --s3-port) s3_port="$2"; shift 2 ;;
            --master-port) master_port="$2"; shift 2 ;;
            --volume-port) volume_port="$2"; shift 2 ;;
            --bucket) bucket="$2"; shift 2 ;;
            *) echo "start-seaweedfs.sh: unknown option '$1'" >&2; usage ;;
        esac
    done
    for port in "$filer_port" "$s3_port" "$master_port" "$volume_port"; do
        if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 55535)); then
            echo "start-seaweedfs.sh: a port must be 1-55535 (its gRPC port is +10000)," \
                "got '$port'" >&2
            exit 2
        fi
    done
    if ! [[ "$bucket" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
        echo "start-seaweedfs.sh: --bucket must be 3-63 lowercase letters, digits," \
            "'.' or '-', got '$bucket'" >&2
        exit 2
    fi
    if pid=$(running_pid "$data_dir"); then
        echo "start-seaweedfs.sh: already running in $data_dir (pid $pid)" >&2
        exit 1
    fi

    local weed
    weed=$(find_weed)
    mkdir -p "$data_dir/data" "$data_dir/master"
    data_dir=$(cd "$data_dir" && pwd)
    local s3_args=()
    if [[ -n "${S3_ACCESS_KEY:-}" && -n "${S3_SECRET_KEY:-}" ]]; then
        write_s3_config "$data_dir/s3.json"
        s3_args=("-s3.config=$data_dir/s3.json")
    fi

    # setsid puts weed in its own process group, which stop signals as a whole.
    setsid "$weed" server \
        -dir="$data_dir/data" -master.dir="$data_dir/master" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$master_port" -master.port.grpc=$((master_port + 10000)) \
        -master.volumeSizeLimitMB=1024 -volume.max=0 \
        -master.telemetry=false \
        -volume.port="$volume_port" -volume.port.grpc=$((volume_port + 10000)) \
        -volume.preStopSeconds=0 \
        -filer -filer.port="$filer_port" -filer.port.grpc=$((filer_port + 10000)) \
        -filer.localSocket="$data_dir/filer.sock" \
        -s3 -s3.port="$s3_port" -s3.port.grpc=$((s3_port + 10000)) \
        -s3.localSocket="$data_dir/s3.sock" -s3.port.iceberg=0 -s3.port.lance=0 \
        "${s3_args[@]}" \
        >>"$data_dir/weed.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$data_dir/weed.pid"

    local filer="http://127.0.0.1:$filer_port"
    local deadline=$((SECONDS + 60))
    until curl -fsS -o /dev/null -X PUT --data-binary ready "$filer/peptide-opt-probe/ready" \
        2>/dev/null; do
        if ! is_alive "$pid"; then
            echo "start-seaweedfs.sh: weed exited; last lines of $data_dir/weed.log:" >&2
            tail -n 20 "$data_dir/weed.log" >&2
            rm -f "$data_dir/weed.pid"
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "start-seaweedfs.sh: the Filer at $filer did not accept a write in 60 s;" \
                "see $data_dir/weed.log" >&2
            stop "$data_dir"
            exit 1
        fi
        sleep 0.5
    done
    curl -fsS -o /dev/null -X DELETE "$filer/peptide-opt-probe/?recursive=true"
    # A folder under /buckets/ is a bucket to the S3 gateway.
    curl -fsS -o /dev/null -X POST "$filer/buckets/$bucket/"

    echo "SeaweedFS running, pid $pid (recorded in $data_dir/weed.pid)"
    echo "SEAWEED_FILER_ENDPOINT=$filer"
    echo "S3_ENDPOINT=http://127.0.0.1:$s3_port"
    echo "SEAWEED_BUCKET=$bucket"
}

stop() {
    local data_dir="$1"
    local pid
    if ! pid=$(running_pid "$data_dir"); then
        echo "start-seaweedfs.sh: nothing running in $data_dir"
        rm -f "$data_dir/weed.pid"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    # weed 4.48 may not exit on SIGTERM within seconds; its data is on disk by then.
    for _ in $(seq 1 20); do
        is_alive "$pid" || break
        sleep 0.5
    done
    if is_alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$data_dir/weed.pid"
    echo "SeaweedFS stopped (pid $pid)"
}

[[ $# -ge 2 ]] || usage
command="$1"
data_dir="$2"
shift 2
case "$command" in
    start) start "$data_dir" "$@" ;;
    stop) [[ $# -eq 0 ]] || usage; stop "$data_dir" ;;
    status)
        if pid=$(running_pid "$data_dir"); then
            echo "running, pid $pid"
        else
            echo "not running"
            exit 1
        fi
        ;;
    -h | --help) usage ;;
    *) echo "start-seaweedfs.sh: unknown command '$command'" >&2; usage ;;
esac
