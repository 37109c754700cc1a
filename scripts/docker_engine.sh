#!/usr/bin/env bash
# A private Docker engine for forge-env's Docker runtime and tests, on a machine with no
# registry access.
#
#   scripts/docker_engine.sh start            # install docker.io/debootstrap if missing, start dockerd
#   scripts/docker_engine.sh status           # is it answering? (exit 1 if not)
#   scripts/docker_engine.sh base-image       # build local/python-base:bookworm offline (cached)
#   scripts/docker_engine.sh env-image NAME   # build envs/NAME/Dockerfile -> forge-env/NAME:latest
#   scripts/docker_engine.sh stop             # stop dockerd and remove its runtime files
#
# Everything lives under FORGE_DOCKER_DIR (default: .docker/ in the repository): data-root,
# exec-root, the unix socket, pidfile, log and the cached base rootfs tarball. `start`
# prints `export DOCKER_HOST=unix://...`; eval it (or let the commands here find it).
# Each step prints how long it took. Every command is idempotent.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${FORGE_DOCKER_DIR:-$ROOT/.docker}"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
BASE_IMAGE="${FORGE_BASE_IMAGE:-local/python-base:bookworm}"
ROOTFS_TAR="$DIR/python-base-bookworm.tar"
START_TIMEOUT="${FORGE_DOCKER_START_TIMEOUT:-60}"
# A bridge subnet unlikely to clash with the host's networks.
BIP="${FORGE_DOCKER_BIP:-10.213.0.1/24}"
export DOCKER_HOST="unix://$SOCK"

say() { echo "[docker_engine] $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (dockerd, debootstrap and apt-get do); run it with sudo"
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    need_root "installing ${missing[*]}"
    command -v apt-get >/dev/null || die "dockerd/debootstrap missing and no apt-get: install ${missing[*]} yourself"
    local t; t=$(now)
    say "installing ${missing[*]} with apt-get"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    say "installed ${missing[*]} in $(took "$t")s"
}

answering() { timeout 5 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

daemon_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid; pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

cmd_start() {
    if answering; then
        say "dockerd already answers at $SOCK"
        echo "export DOCKER_HOST=unix://$SOCK"
        return 0
    fi
    install_packages
    need_root "starting dockerd"
    mkdir -p "$DIR/data" "$DIR/exec"
    if pid=$(daemon_pid); then
        die "dockerd (pid $pid) runs but does not answer at $SOCK; run '$0 stop' first. Log: $LOG"
    fi
    rm -f "$SOCK" "$PIDFILE"
    local t; t=$(now)
    # No iptables/masquerading: containers get no outbound network (nothing to reach anyway)
    # and -p 127.0.0.1:PORT:8000 publishing works through docker-proxy.
    setsid dockerd \
        --data-root "$DIR/data" --exec-root "$DIR/exec" \
        -H "unix://$SOCK" --pidfile "$PIDFILE" \
        --storage-driver=overlay2 \
        --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --bip "$BIP" \
        </dev/null >>"$LOG" 2>&1 &
    local deadline=$(( $(date +%s) + START_TIMEOUT ))
    until answering; do
        if [ "$(date +%s)" -ge "$deadline" ] || ! kill -0 $! 2>/dev/null; then
            say "dockerd did not answer within ${START_TIMEOUT}s; log tail ($LOG):"
            tail -n 30 "$LOG" >&2 || true
            kill $! 2>/dev/null || true
            exit 1
        fi
        sleep 0.3
    done
    say "dockerd $(docker version --format '{{.Server.Version}}') answers at $SOCK after $(took "$t")s"
    echo "export DOCKER_HOST=unix://$SOCK"
}

cmd_stop() {
    local pid
    if pid=$(daemon_pid); then
        # Containers first: dockerd stops them on SIGTERM too, but removing ours is explicit.
        local ids; ids=$(timeout 10 docker ps -aq --filter label=forge-env.managed=1 2>/dev/null || true)
        [ -n "$ids" ] && timeout 30 docker rm -f $ids >/dev/null 2>&1 || true
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "dockerd (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "dockerd (pid $pid) stopped"
    else
        say "dockerd is not running"
    fi
    # What it leaves behind: socket, pidfile, and the exec-root's netns/runtime mounts.
    rm -f "$SOCK" "$PIDFILE"
    if [ -d "$DIR/exec" ]; then
        grep -o " $DIR/exec[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$DIR/exec"
    fi
}

cmd_status() {
    if answering; then
        echo "running: dockerd $(docker version --format '{{.Server.Version}}') at $SOCK (pid $(daemon_pid || echo '?'))"
        echo "export DOCKER_HOST=unix://$SOCK"
    else
        echo "not running (socket $SOCK)"
        return 1
    fi
}

ensure_running() { answering || cmd_start >/dev/null; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
    # The first Debian mirror apt uses here (one-line or deb822 format).
    local m
    m=$(grep -hsE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -v security | awk '{for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' | head -n1)
    [ -z "$m" ] && m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n1)
    echo "${m:-http://deb.debian.org/debian}"
}

cmd_base_image() {
    ensure_running
    if image_exists "$BASE_IMAGE"; then
        say "$BASE_IMAGE exists; nothing to do"
        return 0
    fi
    if [ ! -s "$ROOTFS_TAR" ]; then
        install_packages
        need_root "debootstrap"
        local mirror; mirror=$(debian_mirror)
        local rootfs="$DIR/rootfs.tmp" t; t=$(now)
        rm -rf "$rootfs"
        say "debootstrap bookworm (minbase + python3, pip) from $mirror"
        # python3-pip: the env Dockerfiles run `python3 -m pip install .`; python3-venv for
        # images that make a venv. No Recommends (no compilers): wheels only.
        if ! debootstrap --variant=minbase \
                --include=python3,python3-pip,python3-venv,ca-certificates \
                bookworm "$rootfs" "$mirror" >"$DIR/debootstrap.log" 2>&1; then
            tail -n 30 "$DIR/debootstrap.log" >&2
            die "debootstrap failed (full log: $DIR/debootstrap.log)"
        fi
        say "debootstrap took $(took "$t")s"
        # The host's CA bundle: pip inside builds must trust what the host trusts (a proxy CA).
        [ -s /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        t=$(now)
        tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
        rm -rf "$rootfs"
        say "rootfs tarball $ROOTFS_TAR ($(du -h "$ROOTFS_TAR" | cut -f1)) in $(took "$t")s"
    fi
    local t; t=$(now)
    docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' \
        "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
    say "imported $BASE_IMAGE in $(took "$t")s"
}

python_bin() {
    # The checkout's venv (it has the docker SDK), else whatever python3 is on PATH.
    if [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"; else echo python3; fi
}

cmd_env_image() {
    local name="${1:-}"
    [ -n "$name" ] || die "usage: $0 env-image NAME (one of: $(ls "$ROOT/envs" | grep -v -e '^_' -e '\.' | tr '\n' ' '))"
    [ -f "$ROOT/envs/$name/Dockerfile" ] || die "no $ROOT/envs/$name/Dockerfile: NAME must be a folder under envs/ with a Dockerfile"
    ensure_running
    image_exists "$BASE_IMAGE" || cmd_base_image
    # The build itself is `forge-env build` (forge_env.runtime.build_env_image): a small
    # context (pyproject.toml, README.md, forge_env/, envs/), host networking so pip inside
    # reaches the index like the host does, the host pip's index settings as PIP_ARGS
    # (FORGE_PIP_ARGS overrides). It prints the tag on stdout, build steps on stderr.
    (cd "$ROOT" && "$(python_bin)" -m forge_env.cli build "$name" --base-image "$BASE_IMAGE")
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    base-image) cmd_base_image ;;
    env-image) shift; cmd_env_image "$@" ;;
    *) echo "usage: $0 start|stop|status|base-image|env-image NAME" >&2; exit 2 ;;
esac
