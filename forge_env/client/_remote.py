"""RemoteEnv: an :class:`~forge_env.AsyncEnv` that drives any OpenEnv 0.10 server over its wire.

One RemoteEnv is one server-side session: a WebSocket on ``/ws`` holding one env instance.
HTTP (httpx) serves the stateless routes: ``/health``, ``/metadata``, ``/schema`` and MCP
JSON-RPC on ``/mcp`` when no session is open.

The per-step path is deliberately lean, because rollouts run hundreds of these in one event
loop: a WebSocket connection of our own (``_wsconn``: frames written straight to the
transport and parsed in ``data_received``, no per-message compression), one stdlib
C-accelerated JSON encode and decode per frame, one pydantic validation (the observation
model), no extra tasks and no timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
from typing import Any, Callable, Generic, Mapping

from pydantic import BaseModel, ValidationError
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from forge_env._exceptions import (
    ConnectError,
    ConnectionClosedError,
    EnvTimeoutError,
    SessionError,
    TransportError,
    server_error_from_envelope,
)
from forge_env._wire import JsonRpcErrorCode, reset_result_from_payload, step_result_from_payload
from forge_env.client._urls import ServerEndpoints
from forge_env.client._wsconn import InvalidProxyConfig, WsClosed, WsConnection, connect_ws
from forge_env.env._core import (
    ActT,
    AnyAction,
    AnyObservation,
    AsyncEnv,
    EnvMetadata,
    ObsT,
    ResetResult,
    State,
    StepResult,
    ToolSpec,
)

__all__ = ["RemoteEnv"]

logger = logging.getLogger(__name__)


def _make_encode() -> Callable[[Any], str]:
    """``json.dumps`` with compact separators and non-ASCII kept as is, minus its per-call setup.

    ``JSONEncoder.encode`` builds a new C encoder object on every call; on a path taken
    thousands of times a second that setup costs more than the encoding. Here the C encoder
    is built once (checked against the stdlib's output; the plain encoder where the C one is
    missing or differs). It runs without the circular-reference bookkeeping: a circular
    structure recurses until RecursionError, and is then re-encoded by the stdlib encoder,
    which raises its usual ``ValueError: Circular reference detected``.
    """
    plain = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    try:
        from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

        if c_make_encoder is None:
            return plain.encode
        fast = c_make_encoder(None, plain.default, encode_basestring, None, ":", ",", False, False, True)
        sample = {"s": 'é"\n\u2028', "n": [1, -2.5, 1e300, None, True, False], "o": {"1": []}}
        if "".join(fast(sample, 0)) != plain.encode(sample):
            return plain.encode
    except Exception:  # another Python's private json API: keep the public one
        return plain.encode

    def encode(obj: Any) -> str:
        try:
            return "".join(fast(obj, 0))
        except RecursionError:
            return plain.encode(obj)

    return encode


def _make_decode() -> Callable[[str | bytes], Any]:
    """``json.loads`` minus two whitespace regex matches per call: the C scanner first.

    Anything the bare scanner does not take whole (surrounding whitespace, bytes, invalid
    JSON) goes through ``json.loads``, which decodes it or raises its usual error.
    """
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    loads = json.loads

    def decode(raw: str | bytes) -> Any:
        if type(raw) is str:
            try:
                obj, end = scan(raw, 0)
            except (StopIteration, ValueError):
                pass
            else:
                if end == len(raw):
                    return obj
        return loads(raw)

    return decode


_encode = _make_encode()
_decode = _make_decode()

# After these codes the server closes the socket: the session is over, not just the request.
_SESSION_ENDING_CODES = frozenset({"CAPACITY_REACHED", "FACTORY_ERROR", "SESSION_ERROR"})

# JSON-RPC error codes -> the OpenEnv error code whose exception fits them best.
_RPC_TO_CODE = {
    JsonRpcErrorCode.PARSE_ERROR.value: "INVALID_JSON",
    JsonRpcErrorCode.INVALID_REQUEST.value: "VALIDATION_ERROR",
    JsonRpcErrorCode.INVALID_PARAMS.value: "VALIDATION_ERROR",
    JsonRpcErrorCode.METHOD_NOT_FOUND.value: "UNKNOWN_TYPE",
}

# What to do after this client failed the connection itself, by the close code it sent.
_LOCAL_FAILURE_HINT = {
    1009: "raise max_message_size=... (or pass None) if such replies are expected, then call reset()",
    1011: "the server or the network stalled; call reset() to reconnect with a fresh session",
}

_START_HINT = (
    "Is the server running and listening there? Start one with `forge-env serve ENV --port {port}` "
    "(e.g. `forge-env serve guess_number --port {port}`), or `uvicorn ENV.server.app:app --port {port}` "
    "for an OpenEnv env package"
)


class RemoteEnv(AsyncEnv[ObsT, ActT], Generic[ObsT, ActT]):
    """An environment served by any OpenEnv-compatible server, used like a local env.

    Untyped (observations are :class:`~forge_env.AnyObservation`, actions plain dicts)::

        async with RemoteEnv("http://127.0.0.1:8000") as env:
            obs, info = await env.reset(seed=7)
            obs, reward, terminated, truncated, info = await env.step({"guess": 50})

    Typed (the observation is validated into your model; actions are your models)::

        env = RemoteEnv(url, action_type=GuessAction, observation_type=GuessObservation)
        result = await env.step(GuessAction(guess=50))   # result.observation: GuessObservation

    Blocking code: ``with RemoteEnv(url).sync() as env: env.reset(seed=1)``.

    >>> env = RemoteEnv("localhost:8000")        # connects lazily, on the first reset()
    >>> env.url, env.ws_url
    ('http://localhost:8000', 'ws://localhost:8000/ws')

    Behaviour:

    - The first :meth:`reset` (or :meth:`connect`) opens the WebSocket session; later resets
      reuse it. One RemoteEnv is one session; concurrent calls on it are serialised (frames
      never interleave), so share nothing but use one RemoteEnv per concurrent episode.
    - Error envelopes raise the matching :class:`~forge_env.ServerError` subclass
      (``ValidationFailedError``, ``RemoteExecutionError``, ``CapacityReachedError``, ...);
      after a per-request error the session stays usable, as on the server.
    - If the session is lost (server gone, deadline passed, call cancelled mid-reply) the
      call raises, and the next :meth:`reset` reconnects with a fresh session;
      :meth:`step` before that raises :class:`~forge_env.ConnectionClosedError`.
    - Actions: a dict is sent as is; a pydantic model is sent as
      ``model_dump(mode="json")`` — every field, defaults included, so the server sees
      exactly the action the client built (no client-side validation of dicts).
    - Observations: validated into ``observation_type``. Fields the server sends that a
      strict (``extra="forbid"``) model lacks are dropped, so a newer server with more
      fields keeps working.

    Args:
        url: the server, as ``http(s)://host:port[/prefix]``, ``ws(s)://host:port/ws``
            or ``host:port``; the other scheme is derived.
        action_type: the model of actions (documentation and type checking; dicts are
            still accepted). Default :class:`~forge_env.AnyAction`.
        observation_type: the model observations are validated into. Default
            :class:`~forge_env.AnyObservation` (any fields, as attributes).
        state_type: the model :meth:`state` returns. Default :class:`~forge_env.State`.
        connect_timeout: seconds to open the TCP connection and finish the WebSocket
            handshake (also the connect phase of HTTP calls).
        message_timeout: seconds to wait for each reply (reset, step, state, MCP, HTTP);
            ``None`` waits forever. A timed-out session is dropped (its reply would arrive
            late and be paired with the next request).
        headers: extra HTTP headers for the handshake and HTTP calls, e.g.
            ``{"Authorization": f"Bearer {token}"}`` for a private Hugging Face Space.
        max_message_size: largest accepted reply frame in bytes (``None``: no limit).
        ping_interval: seconds between WebSocket keepalive pings, which keep idle sessions
            alive through proxies while a policy thinks; ``None`` disables them.
    """

    def __init__(
        self,
        url: str,
        *,
        action_type: type[ActT] = AnyAction,  # type: ignore[assignment]
        observation_type: type[ObsT] = AnyObservation,  # type: ignore[assignment]
        state_type: type[State] = State,
        connect_timeout: float = 10.0,
        message_timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
        max_message_size: int | None = 100 * 2**20,
        ping_interval: float | None = 20.0,
    ) -> None:
        for label, model in (
            ("action_type", action_type),
            ("observation_type", observation_type),
            ("state_type", state_type),
        ):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"{label} must be a pydantic model class (e.g. an Observation subclass), got {model!r}")
        _check_seconds("connect_timeout", connect_timeout, allow_none=False)
        _check_seconds("message_timeout", message_timeout, allow_none=True)
        _check_seconds("ping_interval", ping_interval, allow_none=True)
        if max_message_size is not None and (not isinstance(max_message_size, int) or max_message_size <= 0):
            raise ValueError(f"max_message_size must be a positive number of bytes or None, got {max_message_size!r}")

        self._endpoints = ServerEndpoints.parse(url)
        # Instance attributes shadow AsyncEnv's class-level defaults: one class, any server.
        self.action_type = action_type  # type: ignore[misc]
        self.observation_type = observation_type  # type: ignore[misc]
        self.state_type = state_type  # type: ignore[misc]
        self.connect_timeout = float(connect_timeout)
        self.message_timeout = None if message_timeout is None else float(message_timeout)
        self.headers: dict[str, str] = dict(headers or {})
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval

        self._ws: WsConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._lost: str | None = None  # why the last session ended, until the next reset
        self._closed = False
        self._session_label: str | None = None
        self._env_name: str | None = None
        self._http: Any = None  # httpx.AsyncClient, created on first HTTP call
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._rpc_ids = itertools.count(1)
        self._obs_keys: frozenset[str] | None = None

    # --- identity -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's HTTP base URL (``http(s)://host:port[/prefix]``)."""
        return self._endpoints.http_base

    @property
    def ws_url(self) -> str:
        """The session endpoint (``ws(s)://host:port[/prefix]/ws``)."""
        return self._endpoints.ws_url

    @property
    def name(self) -> str:
        """The env's name once :meth:`metadata` was fetched, else the server URL."""
        return self._env_name or self.url

    @property
    def is_connected(self) -> bool:
        """True while a WebSocket session is open (as far as this side knows)."""
        return self._ws is not None and self._ws.open

    @property
    def session_address(self) -> str | None:
        """The client side of the current (or last) session's socket, e.g. ``127.0.0.1:54321``.

        It names the session as the server's access log shows it, and appears as ``session=``
        in every error this env raises. ``None`` before the first connection.
        """
        return self._session_label

    def __str__(self) -> str:
        session = "open" if self._ws is not None else ("closed" if self._closed else "not connected")
        return f"<RemoteEnv {self.url} session={session}>"

    __repr__ = __str__

    def _start_hint(self) -> str:
        return _START_HINT.format(port=self._endpoints.port or "PORT")

    def _ctx(self) -> dict[str, Any]:
        return {"env_name": self._env_name, "session_id": self._session_label, "url": self.url}

    # --- the session ----------------------------------------------------------------------

    async def connect(self) -> "RemoteEnv[ObsT, ActT]":
        """Open the WebSocket session now instead of on the first :meth:`reset`.

        Returns ``self`` so ``env = await RemoteEnv(url).connect()`` works.

        Raises:
            ConnectError: the server cannot be reached or refused the WebSocket upgrade.
            EnvTimeoutError: the handshake did not finish within ``connect_timeout``.
        """
        async with self._session_lock():
            if self._ws is None:
                await self._open()
        return self

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[ObsT]:
        """Start a new episode; opens (or reopens) the session when needed.

        Args:
            seed: sent as the reset frame's ``seed``.
            options: extra keys of the reset frame, e.g. ``{"episode_id": "e1"}``; the
                server passes those its env's ``reset`` accepts.

        Returns:
            ``(observation, info)``; ``info`` is the server's ``metadata``.
        """
        data = dict(options) if options else {}
        if seed is not None:
            data["seed"] = seed
        frame = {"type": "reset", "data": data}
        reused = self._ws is not None
        try:
            reply = await self._request(frame, "reset", "observation", reconnect=True)
        except (ConnectionClosedError, SessionError):
            if not reused:
                raise
            # The kept socket had died while idle (server restarted, session reaped): a reset
            # starts over anyway, so try once more on a fresh session.
            reply = await self._request(frame, "reset", "observation", reconnect=True)
        try:
            return reset_result_from_payload(reply, self.observation_type)
        except ValidationError as e:
            return reset_result_from_payload(self._tolerant(reply, e), self.observation_type)

    async def step(self, action: ActT | dict[str, Any]) -> StepResult[ObsT]:
        """Send one action; returns ``(observation, reward, terminated, truncated, info)``.

        ``reward: null`` from the server reads as 0.0; ``done`` with
        ``metadata.truncated`` reads as ``truncated``, else ``terminated``.

        Raises:
            ValidationFailedError: the server rejected the action (the session stays open).
            RemoteExecutionError: the env raised inside ``step`` (the session stays open).
            ConnectionClosedError: the session is gone; call :meth:`reset` to start anew.
        """
        if isinstance(action, dict):
            payload = action
        elif isinstance(action, BaseModel):
            payload = action.model_dump(mode="json")
        else:
            raise TypeError(
                f"step() takes an action model or a dict of action fields, got {type(action).__name__}: {action!r}"
            )
        reply = await self._request({"type": "step", "data": payload}, "step", "observation", reconnect=False)
        try:
            return step_result_from_payload(reply, self.observation_type)
        except ValidationError as e:
            return step_result_from_payload(self._tolerant(reply, e), self.observation_type)

    async def state(self) -> State:
        """The session's episode bookkeeping (``episode_id``, ``step_count``, ...)."""
        reply = await self._request({"type": "state"}, "state", "state", reconnect=False)
        try:
            return self.state_type.model_validate(reply)
        except ValidationError as e:
            raise TransportError(
                f"the server's state does not fit {self.state_type.__name__}: {e.errors(include_url=False)[:3]}; "
                "pass state_type=State (accepts any fields)",
                **self._ctx(),
            ) from e

    async def close(self) -> None:
        """End the session (``{"type": "close"}``, then the socket) and the HTTP client.

        Idempotent. A closed RemoteEnv cannot be reused: create a new one.
        """
        if self._closed:
            return
        self._closed = True
        ws, self._ws = self._ws, None
        running = asyncio.get_running_loop()
        if ws is not None:
            if self._loop is not running or self._lock.locked():
                # A request is in flight (it fails at once) or the socket belongs to another
                # loop: cut the connection instead of waiting for a polite goodbye.
                with contextlib.suppress(Exception):
                    ws.abort()
            else:
                async with self._lock:
                    ws.send_text('{"type":"close"}')
                    await ws.close()
        http, self._http = self._http, None
        if http is not None and self._http_loop is running:
            await http.aclose()

    # --- HTTP routes ------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "healthy"}`` from a live OpenEnv server.

        Raises:
            ConnectError / EnvTimeoutError: the server cannot be reached in time.
            TransportError: it answered with a non-2xx status.
        """
        return await self._http_object("GET", "/health")

    async def metadata(self) -> EnvMetadata:  # type: ignore[override]
        """``GET /metadata``: the env's name, description, version, ...

        Also makes :attr:`name` (used in error messages) the env's name.
        """
        data = await self._http_object("GET", "/metadata")
        known = {k: v for k, v in data.items() if k in EnvMetadata.model_fields}
        meta = EnvMetadata.model_validate({"name": self.url, **known})
        self._env_name = meta.name
        return meta

    async def schema(self) -> dict[str, Any]:
        """``GET /schema``: JSON schemas under ``action``, ``observation`` and ``state``."""
        return await self._http_object("GET", "/schema")

    # --- MCP tools ----------------------------------------------------------------------------

    async def list_tools(self) -> list[ToolSpec]:
        """MCP ``tools/list``: over the open session, else over HTTP ``POST /mcp``.

        Raises:
            RemoteExecutionError: e.g. the env does not support MCP.
        """
        result = await self._rpc("tools/list", {})
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise TransportError(f"tools/list answered without a 'tools' list: {result!r:.200}", **self._ctx())
        return [
            ToolSpec.model_validate(
                {
                    "name": str(t.get("name")),
                    "description": t.get("description") or "",
                    "inputSchema": t.get("inputSchema") or t.get("input_schema") or {"type": "object", "properties": {}},
                }
            )
            for t in tools
            if isinstance(t, dict)
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """MCP ``tools/call``; returns the JSON-RPC ``result`` as the server sent it.

        With a session open the tool runs on the session's env (it sees the episode); without
        one, the server runs it on a fresh env instance.

        Raises:
            ValidationFailedError: unknown tool or bad arguments (JSON-RPC -32602).
            RemoteExecutionError: the tool raised (JSON-RPC -32603).
        """
        return await self._rpc("tools/call", {"name": name, "arguments": dict(arguments or {})})

    # --- internals: the WebSocket ------------------------------------------------------------

    def _session_lock(self) -> asyncio.Lock:
        if self._closed:
            raise RuntimeError(f"{self} was closed; create a new RemoteEnv to start another session")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._ws is not None:
                raise RuntimeError(
                    f"{self} has a session open on another event loop; a WebSocket cannot move "
                    "between loops: close it there, or use one RemoteEnv per loop (don't mix "
                    "`await env.…` and `env.sync()` on the same RemoteEnv)"
                )
            # asyncio.Lock binds to the first loop that waits on it.
            self._lock = asyncio.Lock()
            self._loop = loop
        return self._lock

    async def _open(self) -> None:
        """Open the WebSocket session (lock held)."""
        url = self.ws_url
        try:
            # No per-message compression is offered: env frames are small JSON, and deflate
            # costs more CPU than it saves on loopback and LAN, on both ends.
            ws = await connect_ws(
                url,
                headers=self.headers,
                open_timeout=self.connect_timeout,
                max_size=self.max_message_size,
                ping_interval=self.ping_interval,
                close_timeout=min(self.connect_timeout, 5.0),
                # An HTTP(S)_PROXY meant for the internet must not intercept loopback servers.
                use_proxy=not self._endpoints.is_loopback,
            )
        except TimeoutError as e:
            raise EnvTimeoutError(
                f"connect_timeout ({self.connect_timeout:g}s) passed while opening the WebSocket "
                f"session at {url}: the server accepted no connection or never finished the "
                "handshake (overloaded, starting up, or not an HTTP server on that port?); "
                "raise connect_timeout=... if it is just slow",
                **self._ctx(),
            ) from e
        except InvalidStatus as e:
            status = e.response.status_code
            hint = {
                401: "the server wants credentials: pass headers={'Authorization': 'Bearer ...'}",
                403: "no WebSocket route at that path, or the server refused the session (is the URL path right? credentials?)",
                404: "there is no /ws endpoint there: is it an OpenEnv (>= 0.2) server, and is the URL path right?",
            }.get(status, "is this an OpenEnv server, and is the URL right?")
            raise ConnectError(
                f"the server at {url} refused the WebSocket upgrade with HTTP {status}: {hint}",
                **self._ctx(),
            ) from e
        except InvalidURI as e:
            raise ConnectError(f"invalid WebSocket URL {url!r}: {e}", **self._ctx()) from e
        except InvalidProxyConfig as e:
            raise ConnectError(
                f"cannot reach {url} through the configured proxy ({e}): fix HTTPS_PROXY/HTTP_PROXY/"
                "ALL_PROXY, or exempt the host with NO_PROXY",
                **self._ctx(),
            ) from e
        except InvalidHandshake as e:
            raise ConnectError(
                f"the WebSocket handshake with {url} failed ({e}): wrong scheme (https/wss vs "
                "http/ws) or not an OpenEnv server on that port?",
                **self._ctx(),
            ) from e
        except ssl.SSLError as e:
            raise ConnectError(
                f"the TLS handshake with {url} failed ({e.reason or e}): if the server speaks plain "
                "HTTP there, use an http:// or ws:// URL (check the scheme: https/wss vs http/ws)",
                **self._ctx(),
            ) from e
        except OSError as e:
            raise ConnectError(
                f"could not connect to {url} ({type(e).__name__}: {e}). {self._start_hint()}", **self._ctx()
            ) from e
        self._ws = ws
        self._lost = None
        local = ws.local_address
        # The client-side socket address names the session as the server's access log shows it.
        self._session_label = f"{local[0]}:{local[1]}" if local else None

    def _drop(self, ws: WsConnection, why: str) -> None:
        """Forget a session whose socket cannot be trusted any more (lock held)."""
        if self._ws is ws:
            self._ws = None
        self._lost = why
        # Abort, not a polite close: a reply may still be in flight and we will not read it;
        # the server sees the disconnect at once and frees the session's capacity slot.
        ws.abort()

    async def _request(self, frame: dict[str, Any], what: str, expect: str, *, reconnect: bool) -> dict[str, Any]:
        """Send one frame on the session and return the ``data`` of its reply."""
        lock = self._session_lock()
        await lock.acquire()  # not `async with`: two coroutine frames fewer per request
        try:
            ws = self._ws
            if ws is not None and reconnect and not ws.open:
                self._drop(ws, "closed while idle")  # known dead: do not send into it
                ws = None
            if ws is None:
                if self._lost is not None and not reconnect:
                    raise ConnectionClosedError(
                        f"cannot {what}: the session ended ({self._lost}); call reset() to start a new session",
                        **self._ctx(),
                    )
                await self._open()
                ws = self._ws
                assert ws is not None
            # A closing socket takes no frame; recv() then returns what the server sent before
            # closing (a refused session's CAPACITY_REACHED error), or how it closed.
            ws.send_text(_encode(frame))
            try:
                reply_raw = await ws.recv(self.message_timeout)
            except TimeoutError as e:
                self._drop(ws, f"no {what} reply within message_timeout")
                raise EnvTimeoutError(
                    f"message_timeout ({self.message_timeout:g}s) passed waiting for the {what} reply from "
                    f"{self.ws_url}; the session was dropped (a late reply would be paired with the next "
                    "request): call reset() to start a new one, or raise message_timeout=...",
                    **self._ctx(),
                ) from e
            except WsClosed as e:
                if self._closed:
                    raise ConnectionClosedError(
                        f"close() was called while the {what} request was in flight", **self._ctx()
                    ) from e
                if e.local is not None:
                    self._drop(ws, f"dropped by this client: {e.local}")
                    raise ConnectionClosedError(
                        f"the session was dropped before the {what} reply: {e.local} (close code {e.code}); "
                        f"{_LOCAL_FAILURE_HINT.get(e.code, 'call reset() to reconnect with a fresh session')}",
                        **self._ctx(),
                    ) from e
                self._drop(ws, f"closed by the server, code {e.code}{': ' + e.reason if e.reason else ''}")
                raise ConnectionClosedError(
                    f"the server closed the session (close code {e.code}"
                    f"{', reason ' + repr(e.reason) if e.reason else ''}{_close_hint(e.code)}) before the {what} "
                    "reply; call reset() to reconnect with a fresh session",
                    **self._ctx(),
                ) from e
            except BaseException:
                # Cancelled mid-request (e.g. an outer deadline): the reply may still arrive
                # and would desynchronise every later request on this socket.
                self._drop(ws, f"{what} cancelled before its reply arrived")
                raise
            try:
                reply = _decode(reply_raw)
                kind = reply["type"]
                data = reply.get("data")
            except (ValueError, TypeError, KeyError) as e:
                self._drop(ws, "the server sent a malformed frame")
                raise TransportError(
                    f"the server sent a frame that is not an OpenEnv message: {reply_raw!r:.200}", **self._ctx()
                ) from e
            if kind == expect and isinstance(data, dict):
                return data
            if kind == "error":
                err = server_error_from_envelope(data if isinstance(data, dict) else {}, **self._ctx())
                if err.code in _SESSION_ENDING_CODES or not ws.open:
                    self._drop(ws, f"the server refused the session ({err.code})")
                raise err
            self._drop(ws, f"unexpected {kind!r} frame")
            raise TransportError(
                f"expected a {expect!r} frame in reply to {what}, got {reply_raw!r:.200}; "
                "the session was dropped to stay in sync",
                **self._ctx(),
            )
        finally:
            lock.release()

    def _tolerant(self, reply: dict[str, Any], error: ValidationError) -> dict[str, Any]:
        """Drop observation fields a strict observation model does not declare, or explain."""
        errors = error.errors(include_url=False)
        if not all(err.get("type") == "extra_forbidden" for err in errors):
            raise TransportError(
                f"the server's observation does not fit {self.observation_type.__name__}: "
                f"{[(e.get('loc'), e.get('msg')) for e in errors[:3]]}; fix the model or pass "
                "observation_type=AnyObservation",
                **self._ctx(),
            ) from error
        if self._obs_keys is None:
            keys = {"metadata", "reward", "done"}
            for field_name, field in self.observation_type.model_fields.items():
                keys.add(field_name)
                if field.alias:
                    keys.add(field.alias)
            self._obs_keys = frozenset(keys)
        obs = reply.get("observation")
        extra = sorted(k for k in obs if k not in self._obs_keys) if isinstance(obs, dict) else []
        logger.debug("dropping observation fields %s unknown to %s", extra, self.observation_type.__name__)
        fields = {k: v for k, v in obs.items() if k in self._obs_keys} if isinstance(obs, dict) else {}
        return {**reply, "observation": fields}

    # --- internals: HTTP and JSON-RPC -----------------------------------------------------------

    def _http_client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError(f"{self} was closed; create a new RemoteEnv")
        if self._http is None or self._http_loop is not loop:
            # An httpx client is bound to the loop it first ran on; give each loop its own.
            self._http = httpx.AsyncClient(
                base_url=self.url,
                headers=self.headers,
                timeout=httpx.Timeout(self.message_timeout, connect=self.connect_timeout),
                trust_env=not self._endpoints.is_loopback,
            )
            self._http_loop = loop
        return self._http

    async def _http_json(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        client = self._http_client()
        where = f"{method} {self.url}{path}"
        try:
            response = await client.request(method, path, content=None if body is None else _encode(body),
                                            headers={"content-type": "application/json"} if body is not None else None)
        except httpx.ConnectTimeout as e:
            raise EnvTimeoutError(
                f"connect_timeout ({self.connect_timeout:g}s) passed connecting for {where}", **self._ctx()
            ) from e
        except httpx.TimeoutException as e:
            raise EnvTimeoutError(
                f"message_timeout ({self.message_timeout}s) passed waiting for {where}", **self._ctx()
            ) from e
        except httpx.ConnectError as e:
            raise ConnectError(f"could not connect for {where} ({e}). {self._start_hint()}", **self._ctx()) from e
        except httpx.HTTPError as e:
            raise TransportError(f"{where} failed: {type(e).__name__}: {e}", **self._ctx()) from e
        if response.status_code >= 400:
            raise TransportError(
                f"{where} answered HTTP {response.status_code}: {response.text[:300]}", **self._ctx()
            )
        try:
            return response.json()
        except ValueError as e:
            raise TransportError(f"{where} answered non-JSON: {response.text[:200]!r}", **self._ctx()) from e

    async def _http_object(self, method: str, path: str) -> dict[str, Any]:
        data = await self._http_json(method, path)
        if not isinstance(data, dict):
            raise TransportError(
                f"{method} {self.url}{path} answered {type(data).__name__}, not a JSON object: {data!r:.200}",
                **self._ctx(),
            )
        return data

    async def _rpc(self, method: str, params: dict[str, Any]) -> Any:
        """One JSON-RPC 2.0 call: over the open session's ``mcp`` frame, else ``POST /mcp``."""
        request = {"jsonrpc": "2.0", "method": method, "params": params, "id": next(self._rpc_ids)}
        if self._ws is not None:
            response = await self._request({"type": "mcp", "data": request}, method, "mcp", reconnect=False)
        else:
            response = await self._http_json("POST", "/mcp", request)
        if not isinstance(response, dict):
            raise TransportError(f"{method} answered a non-object: {response!r:.200}", **self._ctx())
        error = response.get("error")
        if error is not None:
            error = error if isinstance(error, dict) else {"message": str(error)}
            rpc_code = error.get("code")
            raise server_error_from_envelope(
                {
                    "code": _RPC_TO_CODE.get(rpc_code, "EXECUTION_ERROR") if isinstance(rpc_code, int) else "EXECUTION_ERROR",
                    "message": f"MCP {method} failed (JSON-RPC {rpc_code}): {error.get('message')}",
                    "rpc_code": rpc_code,
                    "rpc_data": error.get("data"),
                },
                **self._ctx(),
            )
        return response.get("result")


def _check_seconds(label: str, value: float | None, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        none = " or None" if allow_none else ""
        raise ValueError(f"{label} must be a positive number of seconds{none}, got {value!r}")


def _close_hint(code: int) -> str:
    return {
        1001: ": the server is going away",
        1006: ": no close frame; the server process died or the network dropped",
        1011: ": the server hit an internal error",
        1012: ": the server is restarting",
    }.get(code, "")

