"""A lean WebSocket client connection: the transport under :class:`~forge_env.client.RemoteEnv`.

Rollouts run hundreds of sessions in one event loop and every step is one small JSON frame
each way, so the per-frame cost of the client is the client's throughput. The general-purpose
``websockets`` asyncio connection spends most of its time in machinery an env session never
uses (a send context manager and write-buffer accounting per frame, a message assembler with
flow control, a generator-based frame parser). This module keeps the parts that are done once
per session on ``websockets`` (its sans-I/O :class:`~websockets.client.ClientProtocol` builds
the handshake request and checks the response; its proxy helpers open tunnels) and does the
per-frame work itself, as RFC 6455 describes it for a client:

- outgoing frames are masked with a key from the OS CSPRNG (``os.urandom``, drawn in blocks)
  and written straight to the transport;
- incoming frames are parsed in ``data_received``; a complete text frame resolves the one
  pending reply future (a session has at most one request in flight), else it is queued;
- pings are answered, fragmented messages reassembled, UTF-8 and masking checked, messages
  over ``max_size`` refused (close 1009), and the close handshake is done both ways;
- a keepalive ping every ``ping_interval`` (no pong by the next one: the connection is
  failed), and the per-reply deadline re-arms one lazy timer instead of one timer per reply.

It runs on any asyncio event loop, uvloop included (only ``asyncio.Protocol`` is used)::

    conn = await connect_ws("ws://127.0.0.1:8000/ws", open_timeout=10, max_size=2**20,
                            ping_interval=20, close_timeout=5)
    conn.send_text('{"type":"reset","data":{}}')
    reply = await conn.recv(timeout=60)   # WsClosed / TimeoutError instead of a reply
    await conn.close()
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl as ssl_module
import struct
import urllib.parse
from typing import Any, Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, SecurityError
from websockets.http11 import USER_AGENT
from websockets.uri import WebSocketURI, parse_uri

try:  # the C helper websockets ships; its pure-Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - depends on the wheel
    from websockets.utils import apply_mask

__all__ = ["InvalidProxyConfig", "WsClosed", "WsConnection", "connect_ws"]

_CONNECTING, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes a peer may put on the wire (RFC 6455 7.4.1, 7.4.2; IANA's registry), plus
# 3000-4999 for libraries and applications.
_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_MAX_REDIRECTS = 10
# Queued (unrequested) messages before reading pauses, and when it resumes: a server that
# floods a session cannot make this process buffer without bound.
_INBOX_HIGH, _INBOX_LOW = 16, 4
# Masking keys are drawn from the OS CSPRNG (RFC 6455 5.3 wants them unpredictable) in
# blocks: one getrandom() per 64 frames instead of one per frame.
_MASK_BLOCK = 256

_TIMER_SLACK = 0.002

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack

_default_ssl_context: ssl_module.SSLContext | None = None


def _ssl_context() -> ssl_module.SSLContext:
    # One default context for all wss:// sessions: building one loads the CA store.
    global _default_ssl_context
    if _default_ssl_context is None:
        _default_ssl_context = ssl_module.create_default_context()
    return _default_ssl_context


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # Mark the exception as seen: asyncio would log "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


class InvalidProxyConfig(ValueError):
    """The proxy the environment configures (``HTTPS_PROXY``, ``ALL_PROXY``, ...) is unusable."""


class WsClosed(Exception):
    """The connection is closed (or closing): no reply will come on it.

    Attributes:
        code: the close code the server sent; 1006 when it sent none (the socket dropped),
            or the code this side failed the connection with (see ``local``).
        reason: the close reason that goes with ``code``.
        local: why this side failed the connection (a protocol violation by the server, a
            message over ``max_size``, a missed keepalive pong), else ``None``.
    """

    def __init__(self, code: int, reason: str, local: str | None = None) -> None:
        super().__init__(f"WebSocket closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason
        self.local = local


class WsConnection(asyncio.Protocol):
    """One client WebSocket connection; open it with :func:`connect_ws`.

    The API is what a request/reply session needs: :meth:`send_text`, :meth:`recv` (a
    future for the next message, with an optional deadline), :meth:`close` (the polite
    close handshake) and :meth:`abort`. One caller at a time: ``recv`` keeps a single
    pending future.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        uri: WebSocketURI,
        *,
        max_size: int | None,
        ping_interval: float | None,
        close_timeout: float,
    ) -> None:
        self._loop = loop
        self._uri = uri
        self._max_size = max_size
        self._ping_interval = ping_interval
        self._close_timeout = close_timeout
        self._state = _CONNECTING
        self._transport: asyncio.Transport | None = None
        # Handshake (done once): websockets' sans-I/O protocol writes the request and
        # checks the response; frames never go through it.
        self._handshake: ClientProtocol | None = ClientProtocol(uri, max_size=max_size)
        self._handshake_buf = bytearray()
        self._handshake_body = False  # a non-101 response: its body goes to the protocol too
        self._handshake_done: asyncio.Future[None] = loop.create_future()
        # A handshake abandoned midway (timeout, cancellation) still settles this future.
        self._handshake_done.add_done_callback(_retrieve)
        self._lost: asyncio.Future[None] = loop.create_future()
        # Frames.
        self._rbuf = bytearray()  # bytes of an incomplete frame
        self._fragments: list[bytes] | None = None  # a fragmented message being received
        self._fragments_text = False
        self._fragments_size = 0
        self._masks = b""
        self._mask_pos = _MASK_BLOCK
        # Messages.
        self._waiter: asyncio.Future[str | bytes] | None = None
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._reading_paused = False
        # Deadline of the pending recv (loop time); one lazy timer chases it.
        self._deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        # Keepalive.
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_outstanding = False
        # Closing.
        self._close_code: int | None = None  # as received from the server
        self._close_reason = ""
        self._close_sent = False
        self._failure: tuple[int, str, str] | None = None  # (code, reason, why) when we failed it
        self._close_timer: asyncio.TimerHandle | None = None

    # --- state ------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True while messages can be sent and received."""
        return self._state == _OPEN

    @property
    def local_address(self) -> tuple[Any, ...] | None:
        """This side's socket address, e.g. ``("127.0.0.1", 54321)``."""
        transport = self._transport
        return None if transport is None else transport.get_extra_info("sockname")

    def closed_error(self) -> WsClosed:
        """The :class:`WsClosed` that describes how this connection ended (or is ending)."""
        if self._close_code is not None:
            return WsClosed(self._close_code, self._close_reason)
        if self._failure is not None:
            code, reason, why = self._failure
            return WsClosed(code, reason, why)
        return WsClosed(1006, "")

    # --- sending ----------------------------------------------------------------------------

    def _mask(self) -> bytes:
        pos = self._mask_pos
        if pos >= _MASK_BLOCK:
            self._masks = os.urandom(_MASK_BLOCK)
            pos = 0
        self._mask_pos = pos + 4
        return self._masks[pos : pos + 4]

    def _write_frame(self, first_byte: int, payload: bytes | bytearray) -> None:
        mask = self._mask()
        n = len(payload)
        if n < 126:
            header = bytes((first_byte, 0x80 | n))
        elif n < 65536:
            header = _pack_short(first_byte, 0xFE, n)
        else:
            header = _pack_long(first_byte, 0xFF, n)
        assert self._transport is not None
        self._transport.write(header + mask + apply_mask(payload, mask))

    def send_text(self, text: str) -> None:
        """Send one text message; a no-op once the connection is closing.

        Nothing is raised for a closed connection here: the following :meth:`recv` reports
        how it closed (and still returns what the server sent before closing).
        """
        if self._state == _OPEN:
            self._write_frame(0x80 | _OP_TEXT, text.encode())

    # --- receiving --------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> asyncio.Future[str | bytes]:
        """A future for the next message (``str`` for text, ``bytes`` for binary frames).

        Messages that arrived before are returned first, even after the connection closed.
        The future fails with :class:`WsClosed` when the connection closes first, and with
        :class:`TimeoutError` when ``timeout`` seconds pass first.
        """
        fut = self._loop.create_future()
        inbox = self._inbox
        if inbox:
            fut.set_result(inbox.popleft())
            if self._reading_paused and len(inbox) <= _INBOX_LOW:
                self._reading_paused = False
                if self._transport is not None and self._state != _CLOSED:
                    self._transport.resume_reading()
            return fut
        if self._state != _OPEN:
            fut.set_exception(self.closed_error())
            return fut
        self._waiter = fut
        if timeout is None:
            self._deadline = None
        else:
            deadline = self._deadline = self._loop.time() + timeout
            if self._deadline_timer is None:
                self._deadline_timer = self._loop.call_at(deadline, self._on_deadline)
            # An armed timer fires at an earlier deadline and re-arms for this one: one
            # timer per message_timeout per session, not one per reply.
        return fut

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return
        loop = self._loop
        # Loops run timers up to one clock tick early (asyncio: its clock resolution;
        # uvloop: libuv's millisecond timers).
        if loop.time() + _TIMER_SLACK >= deadline:
            self._waiter = None
            waiter.set_exception(TimeoutError())
        else:
            self._deadline_timer = loop.call_at(deadline, self._on_deadline)

    def _deliver(self, message: str | bytes) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        self._inbox.append(message)
        if len(self._inbox) >= _INBOX_HIGH and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._state != _OPEN:
            if self._state == _CONNECTING:
                self._handshake_data(data)
            # CLOSING/CLOSED: the close frame was the last thing that matters.
            return
        rbuf = self._rbuf
        if rbuf:
            rbuf += data
            buf: bytes | bytearray = rbuf
        else:
            buf = data
        end = len(buf)
        pos = 0
        max_size = self._max_size
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            start = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if b1 & 0x80:
                self._fail(1002, "incorrect masking", "the server sent a masked frame")
                return
            if b0 & 0x70:
                self._fail(1002, "reserved bits must be 0", "the server sent a frame with reserved bits set")
                return
            if max_size is not None and not b0 & 0x08 and self._fragments_size + n > max_size:
                self._fail(
                    1009,
                    f"message over {max_size} bytes",
                    f"the server sent a message of more than {max_size} bytes, over max_message_size",
                )
                return
            stop = start + n
            if stop > end:
                break
            payload = buf[start:stop]
            pos = stop
            if b0 == 0x81 and self._fragments is None:
                # The common case: one whole text frame.
                try:
                    message: str | bytes = payload.decode()
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8", "the server sent a text message that is not UTF-8")
                    return
                self._deliver(message)
            else:
                self._frame(b0, payload)
                if self._state != _OPEN:
                    return
        if rbuf:
            del rbuf[:pos]
        elif pos < end:
            rbuf += buf[pos:]

    def _frame(self, b0: int, payload: bytes | bytearray) -> None:
        """Every frame but a whole text frame: control frames, binary, fragments."""
        fin = b0 & 0x80
        opcode = b0 & 0x0F
        if opcode >= _OP_CLOSE:
            if not fin or len(payload) > 125:
                self._fail(1002, "invalid control frame", "the server sent a fragmented or oversized control frame")
            elif opcode == _OP_PING:
                self._write_frame(0x80 | _OP_PONG, bytes(payload))
            elif opcode == _OP_PONG:
                self._ping_outstanding = False
            elif opcode == _OP_CLOSE:
                self._close_received(payload)
            else:
                self._fail(1002, "unknown opcode", f"the server sent a frame with unknown opcode {opcode}")
            return
        if opcode == _OP_CONT:
            if self._fragments is None:
                self._fail(1002, "unexpected continuation frame", "the server sent a continuation out of a message")
                return
            self._fragments.append(bytes(payload))
            self._fragments_size += len(payload)
        elif opcode in (_OP_TEXT, _OP_BINARY):
            if self._fragments is not None:
                self._fail(1002, "expected a continuation frame", "the server interleaved two fragmented messages")
                return
            if fin:
                self._message(opcode == _OP_TEXT, bytes(payload))
                return
            self._fragments = [bytes(payload)]
            self._fragments_text = opcode == _OP_TEXT
            self._fragments_size = len(payload)
        else:
            self._fail(1002, "unknown opcode", f"the server sent a frame with unknown opcode {opcode}")
            return
        if fin:
            data, text = b"".join(self._fragments), self._fragments_text
            self._fragments, self._fragments_size = None, 0
            self._message(text, data)

    def _message(self, text: bool, data: bytes) -> None:
        if not text:
            self._deliver(data)
            return
        try:
            self._deliver(data.decode())
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8", "the server sent a text message that is not UTF-8")

    def _close_received(self, payload: bytes | bytearray) -> None:
        if len(payload) >= 2:
            code = (payload[0] << 8) | payload[1]
            try:
                reason = bytes(payload[2:]).decode()
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8", "the server sent a close reason that is not UTF-8")
                return
            if code not in _VALID_CLOSE_CODES and not 3000 <= code < 5000:
                self._fail(1002, "invalid close code", f"the server sent close code {code}")
                return
        elif len(payload) == 1:
            self._fail(1002, "invalid close frame", "the server sent a 1-byte close frame")
            return
        else:
            code, reason = 1005, ""  # RFC 6455 7.1.5: "no status code was present"
        self._close_code, self._close_reason = code, reason
        if not self._close_sent:
            # Echo the code (RFC 6455 5.5.1), then the server closes the TCP connection.
            self._close_sent = True
            self._write_frame(0x80 | _OP_CLOSE, b"" if code == 1005 else payload[:2])
        self._state = _CLOSING
        self._fail_waiter()
        self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def eof_received(self) -> bool:
        if self._state == _CONNECTING and self._handshake is not None:
            self._handshake.receive_eof()
            self._check_handshake()
        # Returning False lets the transport close itself; connection_lost follows.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        for timer in (self._deadline_timer, self._ping_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._deadline_timer = self._ping_timer = self._close_timer = None
        if not self._handshake_done.done():
            protocol = self._handshake
            if protocol is not None:
                protocol.receive_eof()
                if protocol.handshake_exc is not None:
                    self._handshake_done.set_exception(protocol.handshake_exc)
            if not self._handshake_done.done():
                self._handshake_done.set_exception(exc or ConnectionResetError("the connection closed during the handshake"))
        self._fail_waiter()
        if not self._lost.done():
            self._lost.set_result(None)

    # --- failing and closing ----------------------------------------------------------------

    def _fail_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(self.closed_error())

    def _fail(self, code: int, reason: str, why: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, drop the socket."""
        if self._state == _OPEN and not self._close_sent:
            self._close_sent = True
            self._write_frame(0x80 | _OP_CLOSE, code.to_bytes(2, "big") + reason.encode())
        if self._failure is None:
            self._failure = (code, reason, why)
        self._state = _CLOSING
        self._fail_waiter()
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now, without the close handshake."""
        if self._state == _OPEN:
            self._state = _CLOSING
        self._fail_waiter()
        if self._transport is not None:
            self._transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake: send a close frame, wait for the server to end the connection.

        Waits at most ``close_timeout`` seconds, then drops the socket. Idempotent.
        """
        if self._state == _OPEN:
            self._close_sent = True
            self._state = _CLOSING
            self._write_frame(0x80 | _OP_CLOSE, code.to_bytes(2, "big") + reason.encode())
            self._fail_waiter()
        if self._state != _CLOSED:
            try:
                async with asyncio.timeout(self._close_timeout):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                pass
            finally:
                if self._state != _CLOSED and self._transport is not None:
                    self._transport.abort()

    # --- the opening handshake --------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        protocol = self._handshake
        assert protocol is not None
        if self._handshake_body:
            protocol.receive_data(data)
            self._check_handshake()
            return
        buf = self._handshake_buf
        search_from = max(0, len(buf) - 3)
        buf += data
        end = buf.find(b"\r\n\r\n", search_from)
        if end < 0:
            protocol.receive_data(data)
            self._check_handshake()
            return
        # Feed the protocol the response head only: what follows a 101 is frames, ours to read.
        cut = end + 4 - (len(buf) - len(data))
        protocol.receive_data(data[:cut])
        rest = data[cut:]
        if self._check_handshake():
            if rest and self._state == _OPEN:
                self.data_received(rest)
        elif not self._handshake_done.done():
            # A non-101 response with a body (an error page): the protocol reads it, then fails.
            self._handshake_body = True
            if rest:
                protocol.receive_data(rest)
                self._check_handshake()

    def _check_handshake(self) -> bool:
        """Settle the handshake if the protocol has decided; True when the session is open."""
        protocol = self._handshake
        assert protocol is not None
        events = protocol.events_received()
        if self._handshake_done.done():
            return False
        if protocol.handshake_exc is not None:
            self._handshake_done.set_exception(protocol.handshake_exc)
            if self._transport is not None:
                self._transport.abort()
            return False
        if not events:
            return False
        self._state = _OPEN
        self._handshake = None
        self._handshake_buf = bytearray()
        self._handshake_done.set_result(None)
        if self._ping_interval is not None:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._keepalive)
        return True

    def _keepalive(self) -> None:
        self._ping_timer = None
        if self._state != _OPEN:
            return
        if self._ping_outstanding:
            self._fail(1011, "keepalive ping timeout", "the server did not answer a keepalive ping in time")
            return
        self._ping_outstanding = True
        self._write_frame(0x80 | _OP_PING, os.urandom(4))
        assert self._ping_interval is not None
        self._ping_timer = self._loop.call_later(self._ping_interval, self._keepalive)

    async def _start(self, headers: Mapping[str, str] | None) -> None:
        protocol = self._handshake
        assert protocol is not None and self._transport is not None
        request = protocol.connect()
        if headers:
            request.headers.update(headers)
        request.headers.setdefault("User-Agent", USER_AGENT)
        protocol.send_request(request)
        for chunk in protocol.data_to_send():
            if chunk:
                self._transport.write(chunk)
        await self._handshake_done


async def connect_ws(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    open_timeout: float,
    max_size: int | None,
    ping_interval: float | None,
    close_timeout: float,
    use_proxy: bool = True,
) -> WsConnection:
    """Open a :class:`WsConnection` to ``url`` (``ws://`` or ``wss://``).

    Follows up to 10 redirects as ``websockets.connect`` does (no TLS downgrade; credentials
    are not sent to another origin) and goes through the HTTP(S)/SOCKS proxy the environment
    configures for that URL when ``use_proxy``.

    Raises:
        TimeoutError: TCP connect, TLS and handshake took more than ``open_timeout``.
        websockets.exceptions.InvalidURI / InvalidStatus / InvalidHandshake: as websockets.
        OSError, ssl.SSLError: the connection itself failed.
    """
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    extra = dict(headers or {})
    async with asyncio.timeout(open_timeout):
        for _ in range(_MAX_REDIRECTS):
            conn = WsConnection(loop, uri, max_size=max_size, ping_interval=ping_interval, close_timeout=close_timeout)
            await _open_transport(loop, uri, conn, use_proxy=use_proxy)
            try:
                await conn._start(extra)
            except BaseException as exc:
                conn.abort()
                new_url = _redirect(url, uri, exc)
                if new_url is None:
                    raise
                new_uri = parse_uri(new_url)
                if (new_uri.secure, new_uri.host, new_uri.port) != (uri.secure, uri.host, uri.port):
                    # Credentials are for the origin the user named, not wherever it points.
                    extra = {k: v for k, v in extra.items() if k.lower() not in ("authorization", "cookie", "proxy-authorization")}
                url, uri = new_url, new_uri
                continue
            return conn
    raise SecurityError(f"more than {_MAX_REDIRECTS} redirects")


def _redirect(url: str, uri: WebSocketURI, exc: BaseException) -> str | None:
    """The URL a 3xx handshake response to ``url`` points to, when it may be followed."""
    if not isinstance(exc, InvalidStatus) or exc.response.status_code not in (300, 301, 302, 303, 307, 308):
        return None
    location = exc.response.headers.get("Location")
    if location is None:
        return None
    new = urllib.parse.urljoin(url, location)
    if uri.secure and not parse_uri(new).secure:
        raise SecurityError(f"cannot follow redirect to non-secure URI {new}") from exc
    return new


async def _open_transport(loop: asyncio.AbstractEventLoop, uri: WebSocketURI, conn: WsConnection, *, use_proxy: bool) -> None:
    """TCP (+ TLS) to the server, directly or through the configured proxy; ``conn`` gets it."""
    ssl = _ssl_context() if uri.secure else None
    proxy = _configured_proxy(uri) if use_proxy else None
    if proxy is None:
        await loop.create_connection(
            lambda: conn, uri.host, uri.port, ssl=ssl, server_hostname=uri.host if ssl is not None else None
        )
        return
    # Tunnels are opened once per session by websockets' own helpers, exactly as its
    # connect() does; only the frames after the handshake are ours.
    from websockets.asyncio.client import connect_http_proxy, connect_socks_proxy
    from websockets.proxy import parse_proxy

    try:
        parsed = parse_proxy(proxy)
    except Exception as e:  # websockets.exceptions.InvalidProxy
        raise InvalidProxyConfig(f"unusable proxy {proxy!r}: {e}") from e
    if parsed.scheme.startswith("socks"):
        sock = await connect_socks_proxy(parsed, uri)
        await loop.create_connection(lambda: conn, sock=sock, ssl=ssl, server_hostname=uri.host if ssl is not None else None)
        return
    proxy_kwargs: dict[str, Any] = {"ssl": _ssl_context()} if parsed.scheme == "https" else {}
    transport = await connect_http_proxy(parsed, uri, user_agent_header=USER_AGENT, **proxy_kwargs)
    transport.set_protocol(conn)
    if ssl is not None:
        try:
            tls = await loop.start_tls(transport, conn, ssl, server_hostname=uri.host)
        except BaseException:
            transport.abort()
            raise
        assert tls is not None
        transport = tls
    conn.connection_made(transport)


def _configured_proxy(uri: WebSocketURI) -> str | None:
    try:
        from websockets.proxy import get_proxy
    except ImportError:  # websockets < 15 had no proxy support
        return None
    return get_proxy(uri)
