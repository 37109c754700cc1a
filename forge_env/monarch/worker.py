"""A Monarch worker: lets forge-env processes from another machine run on this host.

Start one per host, then list the addresses in ``monarch.hosts`` (or
``HostsConfig(workers=...)``); the driver attaches to them and spawns its generator replicas,
learner ranks and env processes there::

    python -m forge_env.monarch.worker                       # tcp://127.0.0.1:26600, this machine only
    python -m forge_env.monarch.worker --host node1 --bind 0.0.0.0 --port 26600   # reachable as node1
    python -m forge_env.monarch.worker --host auto --bind 0.0.0.0                 # advertise `hostname`

It prints ``forge-env monarch worker listening on tcp://HOST:PORT (pid N)`` once it listens
and runs until it is killed (its processes die with it). When the driver's process exits,
the worker ends the processes that driver spawned and waits for the next one.

Security: a worker runs whatever code a client that reaches its port sends, with no
authentication (Monarch 0.7.0 has no TLS for workers yet). It listens on 127.0.0.1 unless
``--bind`` says otherwise; open the port only to the cluster's own network.

The processes it spawns inherit this worker's environment (not the driver's) and import
forge-env and the env/actor code from this host's Python: install the same versions here.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

# forge_env.monarch sets Monarch's supervision poll period before Monarch is imported.
import forge_env.monarch  # noqa: F401
from forge_env.monarch._hosts import DEFAULT_PORT

__all__ = ["main", "worker_address"]

logger = logging.getLogger(__name__)

# Seconds to wait for the listener to fail (port taken, unknown address) before reporting it up.
_LISTEN_CHECK_S = 0.5


def worker_address(host: str, port: int, bind: str | None = None) -> str:
    """The address Monarch serves: ``tcp://HOST:PORT`` (clients dial it and the worker advertises
    it), with ``@tcp://BIND:PORT`` when it listens on another interface (e.g. ``0.0.0.0``).

    >>> worker_address("node1", 26600, "0.0.0.0")
    'tcp://node1:26600@tcp://0.0.0.0:26600'
    >>> worker_address("::1", 5)
    'tcp://[::1]:5'
    """
    def bracket(h: str) -> str:
        return f"[{h}]" if ":" in h else h

    address = f"tcp://{bracket(host)}:{port}"
    if bind is not None and bind != host:
        address += f"@tcp://{bracket(bind)}:{port}"
    return address


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, listen, serve until killed; 1 if the address cannot be served."""
    parser = argparse.ArgumentParser(
        prog="python -m forge_env.monarch.worker",
        description="Run a Monarch worker that forge-env drivers on other hosts attach to (monarch.hosts).",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address clients dial and the worker advertises: this host's name or IP "
                             "on the cluster network; 'auto' = `hostname` (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--bind", default=None,
                        help="the local IP to listen on when it differs from --host, e.g. 0.0.0.0 for every "
                             "interface (default: --host itself)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be 1-65535, got {args.port}")
    host = socket.gethostname() if args.host == "auto" else args.host
    address = worker_address(host, args.port, args.bind)

    from monarch.actor import start_worker_loop_forever

    serving = start_worker_loop_forever(address=address, ca="trust_all_connections")
    try:
        serving.get(timeout=_LISTEN_CHECK_S)
    except TimeoutError:
        pass  # still serving: the listener is up
    except Exception as e:
        print(f"forge-env monarch worker: cannot serve {address}: {e} (is the port taken, or the address "
              f"not this host's?)", file=sys.stderr, flush=True)
        return 1
    else:
        print(f"forge-env monarch worker: {address} stopped at once", file=sys.stderr, flush=True)
        return 1
    bound = f" (listening on {args.bind})" if args.bind is not None and args.bind != host else ""
    print(f"forge-env monarch worker listening on {worker_address(host, args.port)}{bound} (pid {os.getpid()})",
          flush=True)
    try:
        serving.get()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
