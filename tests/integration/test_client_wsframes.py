"""RemoteEnv's own WebSocket layer (``forge_env.client._wsconn``), frame by frame, on both loops.

Every test runs on asyncio's event loop and on uvloop. The servers are raw loopback TCP
servers that write WebSocket bytes by hand, so each RFC 6455 rule the client enforces
(lengths, fragments, control frames, masking, UTF-8, sizes, close codes, keepalive,
redirects, proxies) is exercised exactly; the last test runs the same client against a real
uvicorn server end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.utils import accept_key, apply_mask

from forge_env import CapacityReachedError, ConnectError, ConnectionClosedError, EnvTimeoutError
from forge_env.client import RemoteEnv
from forge_env.client._wsconn import connect_ws

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on the event loop named by the parameter (10 s bound)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (it has no Windows build)")
        runner: Callable[[Any], Any] = uvloop.run
    else:
        runner = asyncio.run

    def _run(coro: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(10):
                return await coro

        return runner(bounded())

    return _run


# --- a raw WebSocket server -----------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """One frame as a server writes it (unmasked unless ``mask``)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    return head + (mask + apply_mask(payload, mask) if mask else payload)


def text(message: str) -> bytes:
    return frame(TEXT, message.encode())


def observation(**fields: Any) -> str:
    return json.dumps(
        {"type": "observation", "data": {"observation": fields, "reward": 0.0, "done": False}}, ensure_ascii=False
    )


class Peer:
    """The server side of one raw WebSocket connection, after the handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer = reader, writer
        lines = head.decode().split("\r\n")
        self.path = lines[0].split(" ")[1]
        self.headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        self.answer_pings = True
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []
        self.texts: list[str] = []
        self.close_code: int | None = None  # of the client's close frame; -1 without a code

    async def frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        assert b1 & 0x80, "a client frame must be masked (RFC 6455 5.3)"
        key = await self.reader.readexactly(4)
        return bool(b0 & 0x80), b0 & 0x0F, apply_mask(await self.reader.readexactly(n), key)

    async def message(self) -> str | None:
        """The client's next text message; None once it sent a close frame (echoed here)."""
        while True:
            fin, opcode, payload = await self.frame()
            assert fin, "the client never fragments"
            if opcode == TEXT:
                self.texts.append(payload.decode())
                return self.texts[-1]
            if opcode == PING:
                self.pings.append(payload)
                if self.answer_pings:
                    self.send(frame(PONG, payload))
            elif opcode == PONG:
                self.pongs.append(payload)
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else -1
                with contextlib.suppress(ConnectionError):
                    self.send(frame(CLOSE, payload[:2]))
                    await self.writer.drain()
                return None
            else:
                raise AssertionError(f"unexpected opcode {opcode} from the client")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def send_in_pieces(self, data: bytes, size: int) -> None:
        for i in range(0, len(data), size):
            self.writer.write(data[i : i + size])
            await self.writer.drain()
            await asyncio.sleep(0.002)  # separate TCP segments: the client sees partial frames


Script = Callable[[Peer], Awaitable[None]]


def switching_protocols(peer: Peer, *, accept: str | None = None) -> bytes:
    key = accept if accept is not None else accept_key(peer.headers["sec-websocket-key"])
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {key}\r\n\r\n"
    ).encode()


@contextlib.asynccontextmanager
async def raw_server(
    script: Script, respond: Callable[[Peer], bytes] | None = None, peers: list[Peer] | None = None
) -> AsyncIterator[str]:
    """Serve raw WebSockets on a free loopback port; yield the ``http://`` base URL.

    ``respond(peer)`` writes the handshake response (default: a valid 101); ``script(peer)``
    then plays the server. Every connection's Peer is appended to ``peers``.
    """
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            peer = Peer(reader, writer, await reader.readuntil(b"\r\n\r\n"))
            if peers is not None:
                peers.append(peer)
            writer.write(respond(peer) if respond is not None else switching_protocols(peer))
            await writer.drain()
            await script(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def echo_env(peer: Peer, reply: Callable[[Peer, str], Awaitable[None]] | None = None) -> None:
    """An OpenEnv-like env: every reset/step answers an observation with ``text=data['say']``."""
    while (message := await peer.message()) is not None:
        request = json.loads(message)
        if request["type"] == "close":
            continue
        data = request.get("data") or {}
        if data.get("sleep"):
            await asyncio.sleep(data["sleep"])
        answer = observation(text=data.get("say", "hi"))
        if reply is None:
            peer.send(text(answer))
        else:
            await reply(peer, answer)


# --- lengths, fragments, partial reads --------------------------------------------------------------


def test_every_length_encoding_both_ways(run) -> None:
    async def scenario() -> None:
        async with raw_server(echo_env) as url, RemoteEnv(url) as env:
            await env.reset()
            for n in (5, 125, 126, 200, 65535, 65536, 70_000):  # 7-, 16- and 64-bit lengths
                assert (await env.step({"say": "x" * n})).observation.text == "x" * n

    run(scenario())


def test_split_fragmented_reply_with_control_frames_between(run) -> None:
    peers: list[Peer] = []
    message = "é" * 40 + "end"  # two-byte UTF-8, cut between fragments below

    async def fragmented(peer: Peer, answer: str) -> None:
        raw = answer.encode()
        # Where the reply has an "é", the first fragment ends inside it.
        cut1 = raw.index("é".encode()) + 1 if "é" in answer else len(raw) // 3
        cut2 = len(raw) - 10
        wire = (
            frame(TEXT, raw[:cut1], fin=False)
            + frame(PING, b"p1")
            + frame(CONT, raw[cut1:cut2], fin=False)
            + frame(PONG, b"unsolicited")
            + frame(CONT, raw[cut2:])
        )
        await peer.send_in_pieces(wire, 7)

    async def scenario() -> None:
        async with raw_server(lambda p: echo_env(p, fragmented), peers=peers) as url, RemoteEnv(url) as env:
            await env.reset()
            assert (await env.step({"say": message})).observation.text == message
            assert (await env.step({"say": "again"})).observation.text == "again"
            await asyncio.sleep(0.05)
        assert peers[0].pongs[:2] == [b"p1", b"p1"]  # each ping answered with its payload

    run(scenario())


def test_a_frame_in_the_same_packet_as_the_handshake_response(run) -> None:
    refusal = json.dumps(
        {"type": "error", "data": {"message": "full", "code": "CAPACITY_REACHED", "active_sessions": 1, "max_sessions": 1}}
    )

    def respond(peer: Peer) -> bytes:
        return switching_protocols(peer) + text(refusal) + frame(CLOSE, (1000).to_bytes(2, "big"))

    async def scenario() -> None:
        async with raw_server(echo_env, respond=respond) as url, RemoteEnv(url) as env:
            with pytest.raises(CapacityReachedError) as caught:
                await env.reset()
            assert (caught.value.active_sessions, caught.value.max_sessions) == (1, 1)
            assert not env.is_connected

    run(scenario())


# --- what the client refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "code", "why"),
    [
        (frame(TEXT, b"{}", mask=b"abcd"), 1002, "masked frame"),
        (frame(TEXT, b"{}", rsv=0x40), 1002, "reserved bits"),
        (frame(TEXT, b"\xff\xfe"), 1007, "not UTF-8"),
        (frame(TEXT, b"\xc3", fin=False) + frame(CONT, b"("), 1007, "not UTF-8"),
        (frame(0x3, b""), 1002, "unknown opcode 3"),
        (frame(CONT, b"x"), 1002, "continuation out of a message"),
        (frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002, "interleaved"),
        (frame(PING, b"", fin=False), 1002, "fragmented or oversized control frame"),
        (frame(CLOSE, (999).to_bytes(2, "big")), 1002, "close code 999"),
        (frame(CLOSE, (1005).to_bytes(2, "big")), 1002, "close code 1005"),
        (frame(CLOSE, b"\x03"), 1002, "1-byte close frame"),
    ],
    ids=["masked", "rsv", "utf8", "utf8-fragmented", "opcode", "orphan-cont", "interleaved", "ping-fragment",
         "close-code", "close-code-reserved", "close-1-byte"],
)
def test_protocol_violations_fail_the_connection(run, bad: bytes, code: int, why: str) -> None:
    peers: list[Peer] = []

    async def misbehave(peer: Peer, answer: str) -> None:
        peer.send(bad if '"text": "bad"' in answer else text(answer))

    async def scenario() -> None:
        async with raw_server(lambda p: echo_env(p, misbehave), peers=peers) as url, RemoteEnv(url) as env:
            await env.reset()
            with pytest.raises(ConnectionClosedError, match=rf"dropped before the step reply: .*{why}.*close code {code}"):
                await env.step({"say": "bad"})
            assert not env.is_connected
            with pytest.raises(ConnectionClosedError, match="session ended .*call reset"):
                await env.step({"say": "x"})
            await asyncio.sleep(0.05)
        assert peers[0].close_code == code  # the client said why before dropping the socket

    run(scenario())


@pytest.mark.parametrize("shape", ["announced", "fragmented"])
def test_reply_over_max_message_size_is_refused_at_once(run, shape: str) -> None:
    peers: list[Peer] = []

    async def oversized(peer: Peer, answer: str) -> None:
        if shape == "announced":  # a 10 MB header and no payload: the client must not wait for it
            peer.send(bytes([0x81, 127]) + (10 * 2**20).to_bytes(8, "big"))
        else:
            peer.send(frame(TEXT, b"a" * 600, fin=False) + frame(CONT, b"b" * 600))

    async def scenario() -> None:
        async with raw_server(lambda p: echo_env(p, oversized), peers=peers) as url:
            async with RemoteEnv(url, max_message_size=1000) as env:
                started = time.monotonic()
                with pytest.raises(ConnectionClosedError, match=r"more than 1000 bytes.*close code 1009.*max_message_size"):
                    await env.reset()
                assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.05)
        assert peers[0].close_code == 1009

    run(scenario())


# --- closing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [((4001).to_bytes(2, "big") + b"bye", r"close code 4001, reason 'bye'"), (b"", r"close code 1005")],
    ids=["code-and-reason", "no-code"],
)
def test_server_close_frame_reaches_the_error_and_is_echoed(run, payload: bytes, expected: str) -> None:
    peers: list[Peer] = []

    async def closing(peer: Peer, answer: str) -> None:
        if '"text": "x"' in answer:
            peer.send(frame(CLOSE, payload))
            with contextlib.suppress(asyncio.IncompleteReadError):
                _, opcode, echoed = await peer.frame()
                peer.close_code = int.from_bytes(echoed, "big") if echoed else -1
        else:
            peer.send(text(answer))

    async def scenario() -> None:
        async with raw_server(lambda p: echo_env(p, closing), peers=peers) as url, RemoteEnv(url) as env:
            await env.reset()
            with pytest.raises(ConnectionClosedError, match=expected):
                await env.step({"say": "x"})
            assert (await env.reset())[0].text == "hi"  # a fresh session
        assert peers[0].close_code == (4001 if payload else -1)

    run(scenario())


def test_client_close_handshake(run) -> None:
    peers: list[Peer] = []

    async def scenario() -> None:
        async with raw_server(echo_env, peers=peers) as url:
            env = RemoteEnv(url)
            await env.reset()
            started = time.monotonic()
            await env.close()
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.05)
        assert peers[0].texts[-1] == '{"type":"close"}'
        assert peers[0].close_code == 1000

    run(scenario())


def test_close_does_not_wait_past_close_timeout_for_a_mute_server(run) -> None:
    async def mute(peer: Peer) -> None:
        await peer.message()
        peer.send(text(observation(text="hi")))
        await asyncio.sleep(30)  # never reads the close frame, never closes

    async def scenario() -> None:
        async with raw_server(mute) as url:
            env = RemoteEnv(url, connect_timeout=0.3)  # close_timeout = min(connect_timeout, 5)
            await env.reset()
            started = time.monotonic()
            await env.close()
            assert 0.2 < time.monotonic() - started < 1.5

    run(scenario())


# --- keepalive and deadlines -----------------------------------------------------------------------


def test_keepalive_pings_are_sent_and_a_silent_server_is_detected(run) -> None:
    peers: list[Peer] = []

    async def deaf_after_reset(peer: Peer) -> None:
        await peer.message()
        peer.send(text(observation(text="hi")))
        peer.answer_pings = False
        while await peer.message() is not None:
            pass  # reads everything, answers nothing

    async def scenario() -> None:
        async with raw_server(echo_env, peers=peers) as url, RemoteEnv(url, ping_interval=0.05) as env:
            await env.reset()
            await asyncio.sleep(0.3)
            assert (await env.step({"say": "still here"})).observation.text == "still here"
        assert len(peers[0].pings) >= 3

        async with raw_server(deaf_after_reset) as url, RemoteEnv(url, ping_interval=0.1, message_timeout=None) as env:
            await env.reset()
            started = time.monotonic()
            with pytest.raises(ConnectionClosedError, match="did not answer a keepalive ping"):
                await env.step({"say": "anyone?"})
            assert 0.1 <= time.monotonic() - started < 1.5

    run(scenario())


def test_message_timeout_counts_from_each_request(run) -> None:
    async def scenario() -> None:
        async with raw_server(echo_env) as url, RemoteEnv(url, message_timeout=0.4) as env:
            await env.reset()  # arms the reply deadline 0.4 s from now
            await asyncio.sleep(0.25)
            assert (await env.step({"say": "quick"})).observation.text == "quick"
            started = time.monotonic()
            with pytest.raises(EnvTimeoutError, match=r"message_timeout \(0.4s\).*step reply"):
                await env.step({"say": "slow", "sleep": 1.5})
            # The first request's deadline passed meanwhile; this one's did not come early.
            assert 0.37 < time.monotonic() - started < 0.9
            assert not env.is_connected
            assert (await env.reset())[0].text == "hi"

            with pytest.raises(TimeoutError):  # an outer deadline cancels the request
                await asyncio.wait_for(env.step({"say": "slow", "sleep": 0.5}), timeout=0.1)
            assert not env.is_connected
            await env.reset()
            assert (await env.step({"say": "in sync"})).observation.text == "in sync"

    run(scenario())


# --- connecting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (None, r"handshake with .* failed"),  # a 101 with a wrong Sec-WebSocket-Accept
        (b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nerror", r"upgrade with HTTP 500"),
        (b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nbody until EOF", r"upgrade with HTTP 503"),
        (b"garbage\r\n\r\n", r"handshake with .* failed"),
    ],
    ids=["bad-accept", "500-with-length", "503-until-eof", "not-http"],
)
def test_handshake_failures_are_connect_errors(run, response: bytes | None, match: str) -> None:
    def respond(peer: Peer) -> bytes:
        return response if response is not None else switching_protocols(peer, accept="d3Jvbmc=")

    async def hang_up(peer: Peer) -> None:
        peer.writer.close()

    async def scenario() -> None:
        async with raw_server(hang_up, respond=respond) as url, RemoteEnv(url, connect_timeout=3.0) as env:
            with pytest.raises(ConnectError, match=match):
                await env.reset()

    run(scenario())


def test_redirects_are_followed_and_credentials_stay_with_their_origin(run) -> None:
    peers: list[Peer] = []

    async def scenario() -> None:
        async with raw_server(echo_env, peers=peers) as target:
            target_ws = target.replace("http://", "ws://") + "/ws"

            def respond(peer: Peer) -> bytes:
                if peer.path == "/ws":  # same origin, another path
                    return b"HTTP/1.1 302 Found\r\nLocation: /moved/ws\r\nContent-Length: 0\r\n\r\n"
                if peer.path == "/moved/ws":
                    return switching_protocols(peer)
                if peer.path == "/away/ws":  # another origin (port)
                    return f"HTTP/1.1 307 Temporary\r\nLocation: {target_ws}\r\nContent-Length: 0\r\n\r\n".encode()
                return f"HTTP/1.1 301 Moved\r\nLocation: {peer.path}\r\nContent-Length: 0\r\n\r\n".encode()  # a loop

            async def maybe_echo(peer: Peer) -> None:
                if peer.path == "/moved/ws":
                    await echo_env(peer)

            headers = {"Authorization": "Bearer secret", "X-Trace": "t1"}
            async with raw_server(maybe_echo, respond=respond, peers=peers) as url:
                async with RemoteEnv(url, headers=headers) as env:
                    assert (await env.reset())[0].text == "hi"
                moved = [p for p in peers if p.path == "/moved/ws"]
                assert moved and moved[0].headers["authorization"] == "Bearer secret"

                async with RemoteEnv(url + "/away", headers=headers) as env:
                    assert (await env.reset())[0].text == "hi"
                arrived = [p for p in peers if p.path == "/ws" and "x-trace" in p.headers and p is not peers[0]]
                other_origin = [p for p in arrived if p.headers.get("host", "").endswith(target.rsplit(":", 1)[1])]
                assert other_origin and "authorization" not in other_origin[-1].headers
                assert other_origin[-1].headers["x-trace"] == "t1"

                async with RemoteEnv(url + "/loop", headers=headers) as env:
                    with pytest.raises(ConnectError, match="more than 10 redirects"):
                        await env.reset()

    run(scenario())


def test_connects_through_an_http_connect_proxy(run, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY", "ws_proxy", "WS_PROXY", "all_proxy", "ALL_PROXY", "https_proxy",
                 "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "socks_proxy", "SOCKS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    tunnels: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split(" ")[1]
        tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def scenario() -> None:
        proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{proxy_server.sockets[0].getsockname()[1]}")
        try:
            async with raw_server(echo_env) as url:
                ws_url = url.replace("http://", "ws://") + "/ws"
                conn = await connect_ws(ws_url, open_timeout=3, max_size=None, ping_interval=None, close_timeout=1)
                conn.send_text('{"type":"reset","data":{}}')
                assert json.loads(await conn.recv(3))["data"]["observation"] == {"text": "hi"}
                await conn.close()
                assert tunnels == [url.removeprefix("http://")]
        finally:
            proxy_server.close()

    run(scenario())


def _self_signed_cert(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (and its key) as PEM files."""
    x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificate")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_wss_over_tls(run, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from forge_env.client import _wsconn

    cert, key = _self_signed_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)  # trusts the test certificate only
    monkeypatch.setattr(_wsconn, "_default_ssl_context", client_ctx)

    async def scenario() -> None:
        tasks: list[asyncio.Task[Any]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tasks.append(asyncio.current_task())  # type: ignore[arg-type]
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                peer = Peer(reader, writer, await reader.readuntil(b"\r\n\r\n"))
                writer.write(switching_protocols(peer))
                await echo_env(peer)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            async with RemoteEnv(f"https://127.0.0.1:{port}") as env:
                assert env.ws_url.startswith("wss://")
                assert (await env.reset())[0].text == "hi"
                big = "y" * 100_000  # several TLS records: the reply arrives in pieces
                assert (await env.step({"say": big})).observation.text == big
        finally:
            server.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario())


def test_unrequested_messages_queue_in_order_and_pause_reading(run) -> None:
    async def flood(peer: Peer) -> None:
        await peer.message()
        peer.send(b"".join(text(str(i)) for i in range(40)))
        while await peer.message() is not None:
            pass

    async def scenario() -> None:
        async with raw_server(flood) as url:
            conn = await connect_ws(url.replace("http://", "ws://") + "/ws", open_timeout=3, max_size=None,
                                    ping_interval=None, close_timeout=1)
            conn.send_text("go")
            assert await conn.recv(3) == "0"
            await asyncio.sleep(0.05)
            transport = conn._transport
            assert transport is not None and not transport.is_reading()  # 39 queued: back-pressure
            assert [await conn.recv(3) for _ in range(39)] == [str(i) for i in range(1, 40)]
            assert transport.is_reading()
            await conn.close()

    run(scenario())


# --- a real server, both loops ---------------------------------------------------------------------


def counter_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        n = 0
        try:
            while True:
                request = json.loads(await websocket.receive_text())
                data = request.get("data") or {}
                if request["type"] == "reset":
                    n = data.get("seed") or 0
                elif request["type"] == "step":
                    await asyncio.sleep(data.get("sleep", 0))
                    n += data["by"]
                elif request["type"] == "state":
                    await websocket.send_text(json.dumps({"type": "state", "data": {"episode_id": "e", "step_count": n}}))
                    continue
                else:
                    continue
                await websocket.send_text(json.dumps({"type": "observation", "data": {"observation": {"n": n}, "reward": 1.0, "done": False}}))
        except WebSocketDisconnect:
            pass

    return app


def test_real_server_episode_on_both_loops(run, serve_app) -> None:
    url = serve_app(counter_app())

    async def scenario() -> None:
        envs = [RemoteEnv(url, message_timeout=0.5) for _ in range(20)]
        try:
            await asyncio.gather(*(env.reset(seed=i) for i, env in enumerate(envs)))
            for _ in range(10):
                results = await asyncio.gather(*(env.step({"by": 1}) for env in envs))
            assert [r.observation.n for r in results] == [i + 10 for i in range(20)]
            assert (await envs[0].state()).step_count == 10
            with pytest.raises(EnvTimeoutError):
                await envs[1].step({"by": 1, "sleep": 1.0})
            assert not envs[1].is_connected and envs[2].is_connected
            assert (await envs[1].reset(seed=5))[0].n == 5
        finally:
            await asyncio.gather(*(env.close() for env in envs))

    run(scenario())
