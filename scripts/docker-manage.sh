#!/usr/bin/env bash
# Manage the peptide-opt docker compose stack (docker/docker-compose.yml).
#
# Usage: scripts/docker-manage.sh COMMAND [ARGS]
#
# Commands:
#   build [--gpu]                  build the image (--gpu: also the workers' CUDA image)
#   start [--workers N] [--gpu]    start the stack with N worker containers (default 1)
#   stop                           stop and remove the containers; volumes are kept
#   restart                        restart every running service
#   status                         list the services with their state and health
#   logs [-f] [SERVICE]            print the logs, of one service or all (-f: follow)
#   scale N [--gpu]                run N worker containers
#   health                         print each service's state and the API's readiness;
#                                  exits 1 when the API is not ready
#   shell [SERVICE]                open a shell in a running service (default: api)
#   clean [--yes]                  remove containers, volumes and images (asks first)
#   help                           print this message
#
# Environment:
#   DOCKER_COMPOSE   the compose command (default: "docker compose", or "docker-compose"
#                    when only that is installed)
#   ENV_FILE         the settings file for compose (default: .env in the repository)
#   EXECUTOR         celery adds the "celery" profile (Redis, dispatcher, Flower); read
#                    from ENV_FILE when not set in the environment
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
compose_file="$root/docker/docker-compose.yml"
gpu_file="$root/docker/docker-compose.gpu.yml"
env_file="${ENV_FILE:-$root/.env}"
services=(postgres seaweedfs migrate api worker redis dispatcher flower)

usage() {
    sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# Print an error and the usage to stderr, then exit 2 (bad arguments).
usage_error() {
    echo "docker-manage.sh: $*" >&2
    echo >&2
    usage >&2
    exit 2
}

die() {
    echo "docker-manage.sh: $*" >&2
    exit 1
}

require_count() {
    local option=$1 value=${2-}
    if [[ ! $value =~ ^[1-9][0-9]*$ ]]; then
        usage_error "$option must be a positive integer, got '$value'"
    fi
}

require_service() {
    local name=$1 known
    for known in "${services[@]}"; do
        [[ $name == "$known" ]] && return 0
    done
    usage_error "unknown service '$name' (expected one of: ${services[*]})"
}

# The compose command as an array, from DOCKER_COMPOSE or what is installed.
compose_command() {
    if [[ -n ${DOCKER_COMPOSE:-} ]]; then
        read -r -a compose_cmd <<<"$DOCKER_COMPOSE"
    elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        compose_cmd=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        compose_cmd=(docker-compose)
    else
        die "docker compose not found: install Docker with the compose plugin, or set DOCKER_COMPOSE"
    fi
}

executor() {
    if [[ -n ${EXECUTOR:-} ]]; then
        echo "$EXECUTOR"
    elif [[ -f $env_file ]]; then
        sed -n 's/^EXECUTOR=//p' "$env_file" | tail -n 1
    fi
}

# Run compose with the stack's files, settings file and profiles, then ARGS.
compose() {
    if [[ ${#compose_cmd[@]} -eq 0 ]]; then
        compose_command
    fi
    local args=(-f "$compose_file")
    if [[ $use_gpu -eq 1 ]]; then
        args+=(-f "$gpu_file")
    fi
    if [[ -f $env_file ]]; then
        args+=(--env-file "$env_file")
    fi
    if [[ $(executor) == celery ]]; then
        args+=(--profile celery)
    fi
    "${compose_cmd[@]}" "${args[@]}" "$@"
}

cmd_build() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --gpu) use_gpu=1 ;;
            *) usage_error "build: unknown argument '$1'" ;;
        esac
        shift
    done
    compose build
}

cmd_start() {
    local workers=1
    while [[ $# -gt 0 ]]; do
        case $1 in
            --workers)
                [[ $# -ge 2 ]] || usage_error "start: --workers needs a value"
                require_count --workers "$2"
                workers=$2
                shift
                ;;
            --workers=*)
                require_count --workers "${1#--workers=}"
                workers=${1#--workers=}
                ;;
            --gpu) use_gpu=1 ;;
            *) usage_error "start: unknown argument '$1'" ;;
        esac
        shift
    done
    compose up --detach --scale "worker=$workers"
}

cmd_stop() {
    [[ $# -eq 0 ]] || usage_error "stop takes no arguments, got '$*'"
    # down, not stop: it also removes the containers and the network, so that the next
    # start uses the current compose file. Named volumes (the data) are kept.
    compose down --remove-orphans
}

cmd_restart() {
    [[ $# -eq 0 ]] || usage_error "restart takes no arguments, got '$*'"
    compose restart
}

cmd_status() {
    [[ $# -eq 0 ]] || usage_error "status takes no arguments, got '$*'"
    compose ps --all
}

cmd_logs() {
    local follow=() selected=()
    while [[ $# -gt 0 ]]; do
        case $1 in
            -f | --follow) follow=(--follow) ;;
            -*) usage_error "logs: unknown option '$1'" ;;
            *)
                [[ ${#selected[@]} -eq 0 ]] || usage_error "logs takes at most one service"
                require_service "$1"
                selected=("$1")
                ;;
        esac
        shift
    done
    compose logs "${follow[@]}" "${selected[@]}"
}

cmd_scale() {
    local workers=
    while [[ $# -gt 0 ]]; do
        case $1 in
            --gpu) use_gpu=1 ;;
            *)
                [[ -z $workers ]] || usage_error "scale takes one count, got '$workers' and '$1'"
                workers=$1
                ;;
        esac
        shift
    done
    [[ -n $workers ]] || usage_error "scale needs the number of workers"
    require_count "scale N" "$workers"
    # --no-recreate: running workers keep their tasks; only the count changes.
    compose up --detach --no-recreate --scale "worker=$workers" worker
}

cmd_health() {
    [[ $# -eq 0 ]] || usage_error "health takes no arguments, got '$*'"
    compose ps --all --format "table {{.Service}}\t{{.State}}\t{{.Health}}"
    local probe="import os, urllib.request
url = 'http://127.0.0.1:%s/health/ready' % os.environ.get('API_PORT', '8000')
print(urllib.request.urlopen(url, timeout=5).read().decode())"
    if ! compose exec -T api python -c "$probe"; then
        die "health: the API is not ready (see: scripts/docker-manage.sh logs api)"
    fi
}

cmd_shell() {
    local service=api
    if [[ $# -gt 1 ]]; then
        usage_error "shell takes at most one service, got '$*'"
    elif [[ $# -eq 1 ]]; then
        require_service "$1"
        service=$1
    fi
    compose exec "$service" sh
}

cmd_clean() {
    local assume_yes=0 answer=
    while [[ $# -gt 0 ]]; do
        case $1 in
            -y | --yes) assume_yes=1 ;;
            *) usage_error "clean: unknown argument '$1'" ;;
        esac
        shift
    done
    if [[ $assume_yes -eq 0 ]]; then
        echo "This deletes the containers, the images built here and the volumes:" \
            "the database, SeaweedFS's files and local storage." >&2
        read -r -p "Type 'yes' to delete them: " answer || true
        if [[ $answer != yes ]]; then
            echo "clean: nothing deleted" >&2
            exit 1
        fi
    fi
    compose down --volumes --rmi local --remove-orphans
}

main() {
    use_gpu=0
    compose_cmd=()
    if [[ $# -eq 0 ]]; then
        usage_error "missing command"
    fi
    local command=$1
    shift
    case $command in
        help | -h | --help)
            usage
            return 0
            ;;
        build | start | stop | restart | status | logs | scale | health | shell | clean) ;;
        *) usage_error "unknown command '$command'" ;;
    esac
    "cmd_$command" "$@"
}

main "$@"
