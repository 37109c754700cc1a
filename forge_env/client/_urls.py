"""Where an OpenEnv server lives: one user-given URL -> its HTTP base and its WebSocket URL.

Users paste whatever they have at hand: ``http://127.0.0.1:8000``, ``https://x.hf.space``,
``ws://host:8000/ws``, or just ``localhost:8000``. Every form names the same server, so we
accept them all and derive the other scheme instead of making the user think about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ServerEndpoints"]

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass(frozen=True, slots=True)
class ServerEndpoints:
    """The two base addresses of one OpenEnv server.

    >>> e = ServerEndpoints.parse("ws://127.0.0.1:8000/ws")
    >>> e.http_base, e.ws_url
    ('http://127.0.0.1:8000', 'ws://127.0.0.1:8000/ws')
    >>> ServerEndpoints.parse("https://me-guess.hf.space/").ws_url
    'wss://me-guess.hf.space/ws'
    """

    http_base: str
    """``http(s)://host[:port][/prefix]``, no trailing slash; HTTP routes hang off it."""
    ws_url: str
    """``ws(s)://host[:port][/prefix]/ws[?query]``: the session endpoint."""
    host: str
    """The host name alone (used to bypass proxies for loopback servers)."""
    port: int | None = None
    """The port, when the URL names one."""

    @property
    def is_loopback(self) -> bool:
        """True for servers on this machine (no HTTP proxy must sit in between)."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")

    @classmethod
    def parse(cls, url: str) -> "ServerEndpoints":
        """Derive both endpoints from any of the accepted URL forms.

        Raises:
            ValueError: the URL has an unsupported scheme or no host; the message quotes it.
        """
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"RemoteEnv needs a server URL such as 'http://127.0.0.1:8000', got {url!r}")
        raw = url.strip()
        # "localhost:8000" parses as scheme "localhost": treat a URL without "://" as http.
        parts = urlsplit(raw if "://" in raw else f"http://{raw}")
        scheme = parts.scheme.lower()
        if scheme not in _TO_WS:
            raise ValueError(
                f"unsupported URL scheme {parts.scheme!r} in {url!r}: use http://, https://, "
                "ws:// or wss:// (e.g. 'http://127.0.0.1:8000')"
            )
        if not parts.hostname:
            raise ValueError(f"no host in server URL {url!r} (expected e.g. 'http://127.0.0.1:8000')")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"bad port in server URL {url!r}: {e}") from None
        if parts.fragment:
            raise ValueError(f"server URL {url!r} has a '#fragment'; remove it")
        path = parts.path.rstrip("/")
        # The user may have pasted the session endpoint itself.
        if path.endswith("/ws"):
            path = path[: -len("/ws")]
        query = f"?{parts.query}" if parts.query else ""
        return cls(
            http_base=f"{_TO_HTTP[scheme]}://{parts.netloc}{path}",
            ws_url=f"{_TO_WS[scheme]}://{parts.netloc}{path}/ws{query}",
            host=parts.hostname,
            port=port,
        )
