"""uvicorn's sans-I/O WebSocket protocol, minus per-message work a request/response
session does not need.

1. uvicorn's ``websockets-sansio`` protocol pauses reading the socket after *every*
   complete message and resumes when the app takes it from the queue: two ``epoll_ctl``
   calls, about 10 us per message on a small machine — over 10 % of the server's CPU per
   env step. OpenEnv sessions are request/response (one frame in flight per session), so
   that pause buys no back-pressure in practice. This subclass pauses only when
   ``ws_max_queue`` messages are waiting, which keeps a bound for clients that pipeline
   frames. It only reinterprets the protocol's ``read_paused`` flag: with a uvicorn whose
   protocol no longer uses that name, it behaves exactly like the base class. (asyncio
   transports ignore ``resume_reading()`` when reading is not paused, so a spurious resume
   is free.)

2. Sending a text message writes the frame itself (RFC 6455 section 5.2: FIN + text
   opcode, the payload length, the unmasked UTF-8 payload) instead of going through
   ``websockets``' ``Frame`` objects, ``serialize`` and the outgoing buffer: ~3 us less
   per step. Only on the plain path — handshake done, connection open, no extension
   negotiated (per-message deflate is off in ``UVICORN_WS_SETTINGS``), no fragmented
   message in progress, nothing buffered, writable, no frame debug logging — where the
   bytes are identical to what ``websockets`` would write; everything else (and every
   other message type) goes through the base class.
"""

from __future__ import annotations

import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

__all__ = ["LeanWebSocketProtocol", "text_frame_header"]

_OPEN = State.OPEN
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
# FIN bit + opcode 0x1 (text); the mask bit stays 0: servers never mask (RFC 6455 5.1).
_FIN_TEXT = 0x81
_SHORT_HEADERS = [bytes((_FIN_TEXT, n)) for n in range(126)]
_PROTOCOL_ATTRS = ("handshake_complete", "close_sent", "disconnected", "initial_response", "writable", "transport")
_CONNECTION_ATTRS = ("state", "extensions", "expect_continuation_frame", "writes", "debug")


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented text frame with a ``length``-byte payload.

    >>> text_frame_header(5), text_frame_header(200), len(text_frame_header(70000))
    (b'\\x81\\x05', b'\\x81~\\x00\\xc8', 10)
    """
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 65536:
        return _HEAD_16(_FIN_TEXT, 126, length)
    return _HEAD_64(_FIN_TEXT, 127, length)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` that pauses reading only when its queue is full and writes
    plain text frames directly."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        self._paused = False
        self._queue_high = max(int(getattr(config, "ws_max_queue", 32) or 32), 1)
        super().__init__(config, *args, **kwargs)
        # The direct write reads these attributes of uvicorn's protocol and of websockets'
        # connection; with versions that lack one, every message takes the base path.
        self._direct_text = all(hasattr(self, a) for a in _PROTOCOL_ATTRS) and all(
            hasattr(self.conn, a) for a in _CONNECTION_ATTRS
        )

    @property  # type: ignore[override]
    def read_paused(self) -> bool:
        # Answering "already paused" while the queue is short makes the base class skip
        # pause_reading() after each message; receive() then calls a no-op resume.
        if self._paused:
            return True
        queue = self.__dict__.get("queue")
        return queue is not None and queue.qsize() < self._queue_high

    @read_paused.setter
    def read_paused(self, value: bool) -> None:
        self._paused = value

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.send" and self._direct_text and self._writes_plain_text():
            text = message.get("text")
            if text is not None and message.get("bytes") is None:
                payload = text.encode()
                self.transport.write(text_frame_header(len(payload)) + payload)
                return
        await super().send(message)

    def _writes_plain_text(self) -> bool:
        """True where a text frame written here is exactly what the base class writes."""
        conn = self.conn
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and conn.state is _OPEN
            and not conn.extensions
            and not conn.expect_continuation_frame
            and not conn.writes
            and not conn.debug
            and self.writable.is_set()
        )
