"""Network addresses: which hosts keep a listener on this machine (servers bind 127.0.0.1 unless told).

Shared by the env server (``forge_env.server``) and Monarch's host placement
(``forge_env.monarch``); importing it costs nothing.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """True when binding ``host`` keeps the server on this machine.

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("localhost"), is_loopback_host("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
