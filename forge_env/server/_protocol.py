"""uvicorn's sans-I/O WebSocket protocol, minus a per-message pair of syscalls.

uvicorn's ``websockets-sansio`` protocol pauses reading the socket after *every* complete
message and resumes when the app takes it from the queue: two ``epoll_ctl`` calls, about
10 us per message on a small machine — over 10 % of the server's CPU per env step. OpenEnv
sessions are request/response (one frame in flight per session), so that pause buys no
back-pressure in practice. This subclass pauses only when ``ws_max_queue`` messages are
waiting, which keeps a bound for clients that pipeline frames.

It only reinterprets the protocol's ``read_paused`` flag: with a uvicorn whose protocol
no longer uses that name, it behaves exactly like the base class. (asyncio transports
ignore ``resume_reading()`` when reading is not paused, so a spurious resume is free.)
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["LeanWebSocketProtocol"]


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """``websockets-sansio`` that pauses reading only when its queue is full."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        self._paused = False
        self._queue_high = max(int(getattr(config, "ws_max_queue", 32) or 32), 1)
        super().__init__(config, *args, **kwargs)

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
