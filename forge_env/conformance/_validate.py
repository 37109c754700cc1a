"""Judge any running server against the OpenEnv 0.10 wire, from the outside.

The validator speaks plain HTTP (httpx) and WebSocket (websockets) and imports nothing
from our server or client: it must be able to judge OpenEnv's own servers, ours, and
anyone else's by the same rules. Each check is a small coroutine that returns a detail
string or raises :class:`_Fail`/:class:`_Skip`; the runner times it and turns any
exception into a failed check, so one broken endpoint never hides the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websockets
from websockets.asyncio.client import ClientConnection, connect

from forge_env._exceptions import ConnectError
from forge_env.conformance._report import CheckResult, ConformanceReport
from forge_env.conformance._schema_example import example_from_schema

__all__ = ["validate", "normalize_url"]

# Error codes the wire allows for a step whose action the env refuses.
_STEP_ERROR_CODES = {"VALIDATION_ERROR", "EXECUTION_ERROR"}
_CONCURRENCY_EPISODES = ("forge-conformance-a", "forge-conformance-b")
_CHECK_DEADLINE_FACTOR = 12


class _Fail(Exception):
    """The server broke the rule this check tests; the message says how."""


class _Skip(Exception):
    """The check does not apply to this server; the message says why."""


def normalize_url(url: str) -> str:
    """Return ``url`` as ``http(s)://host:port[/prefix]`` without a trailing slash.

    >>> normalize_url("127.0.0.1:8000/")
    'http://127.0.0.1:8000'
    >>> normalize_url("ws://127.0.0.1:8000/ws")
    'http://127.0.0.1:8000'

    Raises:
        ValueError: the URL has no host, or a scheme other than http/https/ws/wss.
    """
    target = url.strip()
    if not target:
        raise ValueError("the server URL is empty; pass one like http://127.0.0.1:8000")
    if "://" not in target:
        target = "http://" + target
    parts = urlsplit(target)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not a server URL; pass one like http://127.0.0.1:8000"
        )
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):  # people paste the WebSocket URL; the base is what we need
        path = path[: -len("/ws")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _ws_url(base: str) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + "/ws", "", ""))


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Session:
    """One WebSocket session with per-message deadlines and JSON decoding."""

    def __init__(self, ws: ClientConnection, timeout: float) -> None:
        self.ws = ws
        self.timeout = timeout

    @classmethod
    async def open(cls, url: str, timeout: float) -> "_Session":
        try:
            ws = await connect(
                url, open_timeout=timeout, ping_interval=None, close_timeout=timeout,
                max_size=2**24,
            )
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
            raise _Fail(f"could not open WS {url}: {type(e).__name__}: {e}") from e
        return cls(ws, timeout)

    @property
    def is_open(self) -> bool:
        return self.ws.close_code is None

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        try:
            await asyncio.wait_for(self.ws.send(text), self.timeout)
        except websockets.ConnectionClosed as e:
            raise _Fail(f"the server closed the session before we could send ({e})") from e

    async def recv(self, what: str) -> dict[str, Any]:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), self.timeout)
        except asyncio.TimeoutError as e:
            raise _Fail(f"no answer to {what} within {self.timeout:g} s") from e
        except websockets.ConnectionClosed as e:
            raise _Fail(f"the server closed the session instead of answering {what} ({e})") from e
        try:
            frame = json.loads(raw)
        except (TypeError, ValueError) as e:
            raise _Fail(f"the answer to {what} is not JSON: {_short(repr(raw), 80)}") from e
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise _Fail(f"the answer to {what} is not a frame with a 'type': {_short(frame)}")
        return frame

    async def request(self, frame: dict[str, Any] | str, what: str) -> dict[str, Any]:
        try:
            await self.send(frame)
        except _Fail:
            # A server refusing the session (CAPACITY_REACHED) sends its error frame and
            # closes at once; if the close won the race, that frame is still queued: read it.
            pass
        return await self.recv(what)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), self.timeout)


def _check_envelope(data: Any, what: str) -> str:
    """Raise unless ``data`` is an observation envelope; return a one-line summary."""
    if not isinstance(data, dict):
        raise _Fail(f"{what}: 'data' should be an object, got {_short(data)}")
    missing = [k for k in ("observation", "reward", "done") if k not in data]
    if missing:
        raise _Fail(f"{what}: the envelope lacks {missing}; got keys {sorted(data)}")
    if not isinstance(data["observation"], dict):
        raise _Fail(f"{what}: 'observation' should be an object, got {_short(data['observation'])}")
    reward = data["reward"]
    if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
        raise _Fail(f"{what}: 'reward' should be a number or null, got {reward!r}")
    if not isinstance(data["done"], bool):
        raise _Fail(f"{what}: 'done' should be a boolean, got {data['done']!r}")
    if data.get("metadata") is not None and not isinstance(data["metadata"], dict):
        raise _Fail(f"{what}: 'metadata' should be an object or absent, "
                    f"got {_short(data['metadata'])}")
    fields = sorted(data["observation"])
    return f"observation fields {fields}, reward={reward!r}, done={data['done']}"


def _error_code(frame: dict[str, Any]) -> str | None:
    data = frame.get("data")
    if frame.get("type") == "error" and isinstance(data, dict):
        return str(data.get("code"))
    return None


def _error_message(frame: dict[str, Any]) -> str:
    data = frame.get("data")
    return str(data.get("message", "")) if isinstance(data, dict) else ""


class _Validator:
    def __init__(self, base: str, timeout: float) -> None:
        self.base = base
        self.ws_url = _ws_url(base)
        self.timeout = timeout
        self.checks: list[CheckResult] = []
        self.paths: dict[str, Any] = {}
        self.api_version: str | None = None
        self.env_name: str | None = None
        self.action_schema: dict[str, Any] | None = None
        self.session: _Session | None = None
        self.http: httpx.AsyncClient | None = None

    # --- plumbing -------------------------------------------------------------------

    async def run(
        self,
        name: str,
        description: str,
        fn: Callable[[], Awaitable[str]],
        *,
        required: bool = True,
    ) -> CheckResult:
        t0 = time.perf_counter()
        skipped = False
        try:
            # Each request has its own deadline; this outer one bounds a whole check (the
            # concurrency check makes about ten round trips).
            detail = await asyncio.wait_for(fn(), self.timeout * _CHECK_DEADLINE_FACTOR)
            passed = True
        except _Skip as e:
            detail, passed, skipped, required = str(e), True, True, False
        except _Fail as e:
            detail, passed = str(e), False
        except asyncio.TimeoutError:
            limit = self.timeout * _CHECK_DEADLINE_FACTOR
            detail, passed = f"did not finish within {limit:g} s", False
        except httpx.HTTPError as e:
            detail, passed = f"HTTP request failed: {type(e).__name__}: {e}", False
        except Exception as e:  # noqa: BLE001 - any surprise is a failed check, not a crash
            detail, passed = f"unexpected {type(e).__name__}: {e}", False
        result = CheckResult(
            name=name,
            passed=passed,
            required=required,
            detail=detail,
            duration_s=time.perf_counter() - t0,
            skipped=skipped,
            description=description,
        )
        self.checks.append(result)
        return result

    async def get_json(self, path: str) -> tuple[int, Any]:
        assert self.http is not None
        response = await self.http.get(path)
        try:
            body = response.json()
        except ValueError:
            body = _NotJson(response.text)
        return response.status_code, body

    async def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        assert self.http is not None
        response = await self.http.post(path, json=payload)
        try:
            body = response.json()
        except ValueError:
            body = _NotJson(response.text)
        return response.status_code, body

    async def main_session(self) -> _Session:
        """The shared WS session, reopened (and reset) if an earlier check lost it."""
        if self.session is None or not self.session.is_open:
            reopened = self.session is not None
            self.session = await _Session.open(self.ws_url, self.timeout)
            if reopened:
                await self.session.request({"type": "reset", "data": {"seed": 0}}, "reset")
        return self.session

    def example_action(self) -> dict[str, Any]:
        if not self.action_schema:
            return {}
        example = example_from_schema(self.action_schema)
        return example if isinstance(example, dict) else {}

    # --- HTTP checks ----------------------------------------------------------------

    async def check_openapi(self) -> str:
        status, body = await self.get_json("/openapi.json")
        if status != 200 or not isinstance(body, dict):
            raise _Fail(f"GET /openapi.json answered {status} {_describe(body)}; serve the "
                        "FastAPI OpenAPI document there")
        info = body.get("info")
        version = info.get("version") if isinstance(info, dict) else None
        if not isinstance(version, str):
            raise _Fail("GET /openapi.json has no info.version string")
        self.api_version = version
        paths = body.get("paths")
        self.paths = paths if isinstance(paths, dict) else {}
        return f"info.version={version!r}, {len(self.paths)} paths"

    async def check_health(self) -> str:
        status, body = await self.get_json("/health")
        if status != 200 or not isinstance(body, dict) or body.get("status") != "healthy":
            raise _Fail(f'GET /health should answer 200 {{"status": "healthy"}}, '
                        f"got {status} {_describe(body)}")
        return _short(body)

    async def check_metadata(self) -> str:
        status, body = await self.get_json("/metadata")
        if status != 200 or not isinstance(body, dict):
            raise _Fail(f"GET /metadata answered {status} {_describe(body)}; it should be "
                        "an object with 'name' and 'description'")
        bad = [k for k in ("name", "description") if not isinstance(body.get(k), str)]
        if bad:
            raise _Fail(f"GET /metadata lacks string field(s) {bad}; got {_short(body)}")
        self.env_name = body["name"]
        return f"name={body['name']!r}, description={_short(body['description'], 60)!r}"

    async def check_schema(self) -> str:
        status, body = await self.get_json("/schema")
        if status != 200 or not isinstance(body, dict):
            raise _Fail(f"GET /schema answered {status} {_describe(body)}; it should hold the "
                        "'action', 'observation' and 'state' JSON schemas")
        bad = [k for k in ("action", "observation", "state") if not isinstance(body.get(k), dict)]
        if bad:
            raise _Fail(f"GET /schema lacks JSON schema object(s) {bad}; got keys {sorted(body)}")
        self.action_schema = body["action"]
        props = sorted((body["action"].get("properties") or {}))
        return f"action fields {props}; example action {_short(self.example_action(), 80)}"

    async def check_http_reset(self) -> str:
        if "/reset" not in self.paths:
            raise _Skip("no POST /reset in /openapi.json paths (production mode)")
        status, body = await self.post_json("/reset", {"seed": 0})
        if status != 200:
            raise _Fail(f"POST /reset {{'seed': 0}} answered {status} {_describe(body)}")
        return _check_envelope(body, "POST /reset")

    async def check_http_step(self) -> str:
        if "/step" not in self.paths:
            raise _Skip("no POST /step in /openapi.json paths (production mode)")
        action = self.example_action()
        status, body = await self.post_json("/step", {"action": action})
        if status == 422 and isinstance(body, dict):
            return f"action {_short(action, 60)} refused with 422 (a validation error is fine)"
        if status in (409, 500, 503) and isinstance(body, dict) and "detail" in body:
            # A fresh env may refuse a step without a reset: the HTTP face of EXECUTION_ERROR
            # (OpenEnv answers 500; forge-env answers 409 Conflict, saying to use /ws).
            return (f"action {_short(action, 60)} -> the env raised, HTTP {status} with a JSON "
                    f"detail (allowed): {_short(body['detail'], 60)}")
        if status != 200:
            raise _Fail(f"POST /step {{'action': {_short(action, 60)}}} answered {status} "
                        f"{_describe(body)} (expected 200, 422 for a bad action, or 409/500 with "
                        "a JSON 'detail')")
        return _check_envelope(body, "POST /step")

    async def check_http_state(self) -> str:
        if "/state" not in self.paths:
            raise _Skip("no GET /state in /openapi.json paths (production mode)")
        status, body = await self.get_json("/state")
        if status != 200 or not isinstance(body, dict):
            raise _Fail(f"GET /state answered {status} {_describe(body)}; expected a state object")
        return f"state fields {sorted(body)}"

    async def check_mode_consistency(self) -> str:
        present = {p: p in self.paths for p in ("/reset", "/step", "/state")}
        if not self.paths:
            raise _Skip("no /openapi.json paths to judge")
        if all(present.values()) or not any(present.values()):
            mode = "simulation" if all(present.values()) else "production"
            return f"{mode} mode: " + ", ".join(f"{p}={v}" for p, v in present.items())
        raise _Fail(f"/reset, /step and /state should be served together or not at all; "
                    f"got {present}")

    async def check_mcp(self) -> str:
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        status, body = await self.post_json("/mcp", request)
        if status != 200 or not isinstance(body, dict):
            raise _Fail(f"POST /mcp (JSON-RPC tools/list) answered {status} {_describe(body)}; "
                        "expected a JSON-RPC 2.0 response (an error response is fine)")
        if body.get("jsonrpc") != "2.0":
            raise _Fail(f"POST /mcp answer lacks jsonrpc='2.0': {_short(body)}")
        if isinstance(body.get("error"), dict):
            err = body["error"]
            if not isinstance(err.get("code"), int) or not isinstance(err.get("message"), str):
                raise _Fail(f"JSON-RPC error lacks an integer code and a message: {_short(err)}")
            return f"JSON-RPC error {err['code']}: {_short(err['message'], 60)} (allowed)"
        result = body.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            raise _Fail(f"tools/list result should be {{'tools': [...]}}, got {_short(result)}")
        names = [t.get("name") for t in result["tools"] if isinstance(t, dict)]
        return f"{len(names)} tool(s): {_short(names, 80)}"

    # --- WebSocket checks -----------------------------------------------------------

    async def check_ws_reset(self) -> str:
        session = await self.main_session()
        frame = await session.request({"type": "reset", "data": {"seed": 0}}, "reset")
        if frame["type"] != "observation":
            raise _Fail(f"reset should answer an 'observation' frame, got {_short(frame)}")
        return _check_envelope(frame.get("data"), "reset")

    async def check_ws_state(self) -> str:
        session = await self.main_session()
        frame = await session.request({"type": "state"}, "state")
        if frame["type"] != "state" or not isinstance(frame.get("data"), dict):
            raise _Fail(f"state should answer {{'type': 'state', 'data': {{...}}}}, "
                        f"got {_short(frame)}")
        data = frame["data"]
        return f"episode_id={data.get('episode_id')!r}, step_count={data.get('step_count')!r}"

    async def check_ws_step(self) -> str:
        session = await self.main_session()
        action = self.example_action()
        frame = await session.request({"type": "step", "data": action}, "step")
        if frame["type"] == "observation":
            return f"action {_short(action, 60)} -> " + _check_envelope(frame.get("data"), "step")
        code = _error_code(frame)
        if code in _STEP_ERROR_CODES:
            return (f"action {_short(action, 60)} refused with {code} (allowed): "
                    f"{_short(_error_message(frame), 60)}")
        raise _Fail(f"step should answer an observation, or an error with code "
                    f"VALIDATION_ERROR/EXECUTION_ERROR; got {_short(frame)}")

    async def _expect_error_then_usable(self, message: Any, code: str, what: str) -> str:
        """Send a bad frame: the answer must be an error with ``code`` and the session
        must still answer ``state`` afterwards."""
        session = await self.main_session()
        frame = await session.request(message, what)
        if _error_code(frame) != code:
            raise _Fail(f"{what} should answer an error with code {code}, got {_short(frame)}")
        after = await session.request({"type": "state"}, f"state (after {what})")
        if after["type"] != "state":
            raise _Fail(f"the session should still answer after {what}; state got {_short(after)}")
        return f"{code} error, then the session still answered state"

    async def check_ws_invalid_json(self) -> str:
        return await self._expect_error_then_usable("{this is not json", "INVALID_JSON", "invalid JSON")

    async def check_ws_unknown_type(self) -> str:
        return await self._expect_error_then_usable(
            {"type": "forge-conformance-unknown"}, "UNKNOWN_TYPE", "an unknown message type"
        )

    async def check_ws_close(self) -> str:
        session = await self.main_session()
        await session.send({"type": "close"})
        # A server may flush a last frame before closing; allow a few, bounded.
        for _ in range(4):
            try:
                await asyncio.wait_for(session.ws.recv(), self.timeout)
            except websockets.ConnectionClosed:
                code = session.ws.close_code
                return f"the server closed the connection (code {code})"
            except asyncio.TimeoutError as e:
                raise _Fail(f"the server did not close the connection within {self.timeout:g} s "
                            "of a 'close' frame") from e
        raise _Fail("the server kept sending frames after a 'close' frame instead of closing")

    async def check_ws_concurrent(self) -> str:
        a = await self._open_reset(_CONCURRENCY_EPISODES[0], seed=1, retry_capacity=True)
        try:
            b = await self._open_reset(_CONCURRENCY_EPISODES[1], seed=2, retry_capacity=False)
        except _CapacityReached as e:
            await a.close()
            raise _Skip(f"the server runs one session at a time ({e}); isolation not claimed") from e
        try:
            state_a0 = await self._state(a)
            state_b0 = await self._state(b)
            action = self.example_action()
            step = await a.request({"type": "step", "data": action}, "step (session A)")
            stepped = step["type"] == "observation"
            state_a1 = await self._state(a)
            state_b1 = await self._state(b)
        finally:
            await asyncio.gather(a.close(), b.close())
        ids = (state_a1.get("episode_id"), state_b1.get("episode_id"))
        if ids[0] is not None and ids[0] == ids[1]:
            raise _Fail(f"both sessions report episode_id {ids[0]!r}: sessions share one env")
        if ids[1] == _CONCURRENCY_EPISODES[0]:
            raise _Fail("session B reports session A's episode id: sessions share one env")
        count_b0, count_b1 = state_b0.get("step_count"), state_b1.get("step_count")
        if isinstance(count_b0, int) and isinstance(count_b1, int) and count_b1 != count_b0:
            raise _Fail(f"a step in session A moved session B's step_count "
                        f"{count_b0} -> {count_b1}: sessions share state")
        count_a0, count_a1 = state_a0.get("step_count"), state_a1.get("step_count")
        how = (f"A step_count {count_a0}->{count_a1}, B {count_b0}->{count_b1}"
               if stepped else "A's step was refused; compared episode ids only")
        return f"2 sessions at once, isolated: {how}; episode ids {ids}"

    async def _open_reset(self, episode_id: str, *, seed: int, retry_capacity: bool) -> _Session:
        # A session closed by the previous check may take a moment to be released.
        attempts = 10 if retry_capacity else 1
        for attempt in range(attempts):
            session = await _Session.open(self.ws_url, self.timeout)
            frame = await session.request(
                {"type": "reset", "data": {"seed": seed, "episode_id": episode_id}}, "reset"
            )
            if _error_code(frame) == "CAPACITY_REACHED":
                await session.close()
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.1)
                    continue
                raise _CapacityReached(_short(_error_message(frame), 80))
            if frame["type"] != "observation":
                await session.close()
                raise _Fail(f"reset of a second session answered {_short(frame)}")
            return session
        raise _Fail("unreachable")  # pragma: no cover

    async def _state(self, session: _Session) -> dict[str, Any]:
        frame = await session.request({"type": "state"}, "state")
        if frame["type"] != "state" or not isinstance(frame.get("data"), dict):
            raise _Fail(f"state answered {_short(frame)}")
        return frame["data"]


class _CapacityReached(_Fail):
    pass


class _NotJson:
    """An HTTP body that did not parse as JSON (kept for the failure message)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"non-JSON body {_short(self.text, 60)!r}"


def _describe(body: Any) -> str:
    return repr(body) if isinstance(body, _NotJson) else _short(body, 100)


async def validate(url: str, *, timeout: float = 10.0) -> ConformanceReport:
    """Check a running server against the OpenEnv 0.10 wire; return a report, never raise
    for a misbehaving server.

    Checks, in order (``*`` = optional: a failure only warns):

    - ``openapi``: ``GET /openapi.json`` has ``info.version``.
    - ``health``: ``GET /health`` is ``{"status": "healthy"}``.
    - ``metadata``: ``GET /metadata`` has string ``name`` and ``description``.
    - ``schema``: ``GET /schema`` has ``action``/``observation``/``state`` JSON schemas.
    - ``ws_reset``, ``ws_state``, ``ws_step``, ``ws_invalid_json``, ``ws_unknown_type``,
      ``ws_close``: one ``WS /ws`` session; the step sends an action generated from the
      action schema and accepts an observation or a VALIDATION/EXECUTION error.
    - ``ws_concurrent*``: two sessions at once stay isolated (skipped when the server
      allows only one).
    - ``http_reset``/``http_state`` (required when the routes exist), ``http_step*``,
      ``mode_consistency``: the stateless HTTP routes.
    - ``mcp``: ``POST /mcp`` answers JSON-RPC ``tools/list`` (an error response is fine).

    >>> # report = await validate("http://127.0.0.1:8000")
    >>> # print(report.format_table()); assert report.passed

    Args:
        url: the server's base URL (``http://host:port``; ``host:port`` and the ``ws://``
            URL of ``/ws`` are accepted too).
        timeout: deadline in seconds for each request and each WS message.

    Raises:
        ValueError: ``url`` is not a server URL.
        ConnectError: nothing answers at ``url`` (connection refused, unknown host).
    """
    base = normalize_url(url)
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    v = _Validator(base, timeout)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        v.http = http
        try:
            await http.get("/health")
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ConnectError(
                f"no server answers at {base} ({type(e).__name__}: {e}); start one with "
                "`forge-env serve guess_number --port PORT` or check the URL",
                url=base,
            ) from e
        await v.run("openapi", "GET /openapi.json has info.version", v.check_openapi)
        await v.run("health", 'GET /health is {"status": "healthy"}', v.check_health)
        await v.run("metadata", "GET /metadata has name and description", v.check_metadata)
        await v.run("schema", "GET /schema has action/observation/state schemas", v.check_schema)
        try:
            await v.run("ws_reset", "WS reset -> observation envelope", v.check_ws_reset)
            await v.run("ws_state", "WS state -> state frame", v.check_ws_state)
            await v.run("ws_step", "WS step (schema example) -> observation or "
                        "VALIDATION/EXECUTION error", v.check_ws_step)
            await v.run("ws_invalid_json", "WS invalid JSON -> INVALID_JSON, session lives",
                        v.check_ws_invalid_json)
            await v.run("ws_unknown_type", "WS unknown type -> UNKNOWN_TYPE, session lives",
                        v.check_ws_unknown_type)
            await v.run("ws_close", "WS close frame -> server closes", v.check_ws_close)
        finally:
            if v.session is not None:
                await v.session.close()
        await v.run("ws_concurrent", "2 WS sessions at once are isolated",
                    v.check_ws_concurrent, required=False)
        await v.run("http_reset", "POST /reset {seed} -> observation envelope",
                    v.check_http_reset)
        await v.run("http_step", "POST /step {action} -> envelope or 422",
                    v.check_http_step, required=False)
        await v.run("http_state", "GET /state -> state object", v.check_http_state)
        await v.run("mode_consistency", "/reset, /step, /state all present or all absent",
                    v.check_mode_consistency)
        await v.run("mcp", "POST /mcp tools/list -> JSON-RPC 2.0 answer", v.check_mcp)
    return ConformanceReport(
        url=base,
        checks=v.checks,
        duration_s=time.perf_counter() - t0,
        api_version=v.api_version,
        env_name=v.env_name,
    )
