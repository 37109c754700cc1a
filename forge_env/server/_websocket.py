"""A WebSocket connection on raw ASGI messages, for the server's per-message hot path.

Starlette's ``WebSocket`` re-checks its state machine on every ``receive``/``send`` and,
mounted as a FastAPI route, every ``send`` also passes through the exception
middleware's wrapper: 2-5 % of the server's CPU per env step (py-spy, 256 sessions). The
session loops need only accept, receive, send text and close, so :class:`AsgiWebSocket`
does those on the ASGI callables themselves, keeping the two state rules that matter:
nothing is sent after a close, and a close is sent once.

:class:`AsgiWebSocketMiddleware` hands ``/ws`` and ``/mcp`` WebSocket connections to the
server before FastAPI's routing (middlewares a user adds to the app still wrap them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["AsgiWebSocket", "AsgiWebSocketMiddleware", "WebSocketGone"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebSocketGone(ConnectionError):
    """The connection is closed (by the peer, or by us): nothing more can be sent."""


class AsgiWebSocket:
    """The server side of one WebSocket connection, on raw ASGI ``receive``/``send``.

    >>> ws = AsgiWebSocket({"type": "websocket", "query_string": b"session_id=s1"}, None, None)
    >>> ws.query_param("session_id"), ws.query_param("other")
    ('s1', None)

    ``receive`` is the ASGI callable itself (it returns ``websocket.receive`` and
    ``websocket.disconnect`` messages); ``send`` sends one ASGI message as is.
    """

    __slots__ = ("scope", "receive", "send", "closed")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        # Set once a close was sent or the peer went away: later sends are refused here,
        # not by the ASGI server (whose error differs between uvicorn's protocols).
        self.closed = False

    def query_param(self, name: str) -> str | None:
        """The first ``name=`` value of the connection's query string, or None."""
        for key, value in parse_qsl(self.scope.get("query_string", b"").decode("latin-1")):
            if key == name:
                return value
        return None

    async def accept(self) -> None:
        """Wait for the client's ``websocket.connect``, then complete the handshake.

        Raises:
            WebSocketGone: the client went away before the handshake completed.
        """
        message = await self.receive()
        if message["type"] != "websocket.connect":
            self.closed = True
            raise WebSocketGone(f"expected websocket.connect, got {message['type']}")
        await self.send({"type": "websocket.accept"})

    async def send_text(self, text: str) -> None:
        """Send one text frame.

        Raises:
            WebSocketGone: the connection is closed (uvicorn's ``ClientDisconnected`` is
                an ``OSError`` too; both mean the peer is gone).
        """
        if self.closed:
            raise WebSocketGone("cannot send on a closed WebSocket")
        await self.send({"type": "websocket.send", "text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame, once; later calls (and a close after the peer left) do nothing."""
        if self.closed:
            return
        self.closed = True
        await self.send({"type": "websocket.close", "code": code, "reason": reason})


Handler = Callable[[AsgiWebSocket], Awaitable[None]]


class AsgiWebSocketMiddleware:
    """Serve WebSocket connections to the given paths with raw-ASGI handlers; pass all
    else to ``app``.

    Paths are matched as Starlette routes match them (``scope["path"]`` less the
    ``root_path`` the app is mounted under), so the app still works when mounted.

    >>> async def app(scope, receive, send): ...
    >>> mw = AsgiWebSocketMiddleware(app, handlers={})
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            handler = self.handlers.get(path)
            if handler is not None:
                await handler(AsgiWebSocket(scope, receive, send))
                return
        await self.app(scope, receive, send)
