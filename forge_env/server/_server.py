"""The engine behind ``create_app``: the ``/ws`` session loop and the stateless operations.

One :class:`EnvServer` per app. The WebSocket loop is the hot path of training (every
env step of every rollout goes through it), so it is written for speed: raw ASGI messages
(:mod:`._websocket`, no starlette ``WebSocket``), one ``json.loads`` per message, a dict
lookup on ``type``, no pydantic models for frames, the action validated by its pydantic
validator directly, the env's coroutines awaited directly (no thread hop, no timer when
there is no deadline), and replies encoded by :mod:`._frames`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from forge_env._exceptions import InvalidActionError
from forge_env._wire import ErrorCode, JsonRpcErrorCode, jsonable
from forge_env.env._core import AsyncEnv, State
from forge_env.server._factory import EnvFactory
from forge_env.server._frames import dumps_jsonable, error_frame_text, observation_frame_text
from forge_env.server._mcp import handle_rpc, rpc_error
from forge_env.server._sessions import (
    CapacityError,
    FactoryFailedError,
    ServerStats,
    Session,
    SessionManager,
)
from forge_env.server._websocket import AsgiWebSocket

__all__ = ["EnvServer", "OperationTimeout", "FrameError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Keys each frame type may carry (openenv's WS message models use extra="forbid").
_FRAME_KEYS: dict[str, frozenset[str]] = {
    "reset": frozenset({"type", "data"}),
    "step": frozenset({"type", "data"}),
    "state": frozenset({"type"}),
    "close": frozenset({"type"}),
    "mcp": frozenset({"type", "data"}),
}
_NEEDS_DATA = frozenset({"step", "mcp"})
_CLOSE = object()  # sentinel reply: end the session


class OperationTimeout(Exception):
    """An env coroutine ran past ``step_timeout``."""


class FrameError(Exception):
    """A frame or its payload failed validation (-> VALIDATION_ERROR with ``errors``)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


def _error(type_: str, loc: list[Any], msg: str, value: Any = None) -> dict[str, Any]:
    """One entry of a pydantic-style error list."""
    return {"type": type_, "loc": loc, "msg": msg, "input": jsonable(value)}


class EnvServer:
    """Serves one env type: sessions over ``/ws`` plus stateless HTTP operations.

    Args:
        factory: makes one env per session.
        max_sessions: capacity of the session table.
        session_idle_timeout: seconds without messages before a session is reaped.
        step_timeout: per-message deadline for reset/step/state/tool calls, or None.
    """

    def __init__(
        self,
        factory: EnvFactory,
        *,
        max_sessions: int,
        session_idle_timeout: float | None,
        step_timeout: float | None,
    ) -> None:
        self.factory = factory
        self.step_timeout = step_timeout
        self.stats = ServerStats(max_sessions=max_sessions)
        self.manager = SessionManager(
            factory, max_sessions=max_sessions, idle_timeout=session_idle_timeout, stats=self.stats
        )
        self.clock = time.monotonic
        # action type -> does it declare a `metadata` field (decides whether to drop
        # the `metadata: {}` that OpenEnv's typed clients add to every action).
        self._keeps_metadata: dict[type, bool] = {}
        # env class -> its action type's pydantic validator, where neither the env's
        # parse_action nor the action's model_validate is overridden (else None).
        self._validators: dict[type, Any] = {}

    # --- helpers shared by WS and HTTP ------------------------------------------------

    @staticmethod
    def describe(error: BaseException) -> str:
        """A one-line description of an env exception for an error message."""
        text = str(error)
        name = type(error).__name__
        return f"{name}: {text}" if text else name

    async def with_timeout(
        self, awaitable: Awaitable[T], what: str, timeout: float | None = None
    ) -> T:
        """Await ``awaitable`` within ``step_timeout`` (no timer at all when it is None).

        ``timeout`` may tighten the server's deadline for one call, never loosen it."""
        if timeout is None or (self.step_timeout is not None and self.step_timeout < timeout):
            timeout = self.step_timeout
        if timeout is None:
            return await awaitable
        try:
            async with asyncio.timeout(timeout) as scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise OperationTimeout(f"{what} timed out after {timeout:g}s") from None
            raise

    async def close_scratch_env(self, env: AsyncEnv[Any, Any]) -> None:
        """Close an env made for one stateless request (errors are logged, not raised)."""
        try:
            await env.close()
        except Exception:
            self.stats.env_close_errors += 1
            logger.exception("env %s raised in close()", self.factory.name)

    def parse_action(self, env: AsyncEnv[Any, Any], data: dict[str, Any]) -> Any:
        """Validate an action payload with ``env.parse_action`` (raises InvalidActionError)."""
        if "metadata" in data:
            action_type = env.action_type
            keeps = self._keeps_metadata.get(action_type)
            if keeps is None:
                keeps = "metadata" in getattr(action_type, "model_fields", {})
                self._keeps_metadata[action_type] = keeps
            if not keeps:
                data = {k: v for k, v in data.items() if k != "metadata"}
        cls = type(env)
        validator = self._validators[cls] if cls in self._validators else self._validator_of(cls)
        if validator is not None:
            # What AsyncEnv.parse_action -> model_validate run for a valid dict, without
            # two Python wrappers (~1 us a step); an invalid one takes the full path
            # below, which raises InvalidActionError with the errors.
            try:
                return validator.validate_python(data)
            except ValidationError:
                pass
        return env.parse_action(data)

    def _validator_of(self, env_type: type) -> Any:
        validator = None
        action_type = getattr(env_type, "action_type", None)
        if (
            getattr(env_type, "parse_action", None) is AsyncEnv.parse_action
            and isinstance(action_type, type)
            and issubclass(action_type, BaseModel)
            and action_type.model_validate.__func__ is BaseModel.model_validate.__func__  # type: ignore[attr-defined]
        ):
            try:
                validator = action_type.__pydantic_validator__
                validator.validate_python  # noqa: B018 - a model not fully defined raises here
            except Exception:
                return None  # not cached: the full path reports why, and may work later
        self._validators[env_type] = validator
        return validator

    @staticmethod
    def split_reset_data(data: dict[str, Any]) -> tuple[int | None, dict[str, Any] | None]:
        """``{"seed": 7, "episode_id": "e1", ...}`` -> ``(7, {"episode_id": "e1", ...})``."""
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise FrameError(
                f"reset seed must be an integer or null, got {seed!r}",
                [_error("int_type", ["data", "seed"], "Input should be a valid integer", seed)],
            )
        options = {k: v for k, v in data.items() if k != "seed"}
        return seed, (options or None)

    async def reset_text(
        self, env: AsyncEnv[Any, Any], data: dict[str, Any], *, frame: bool
    ) -> str:
        """Reset ``env`` from a reset payload; the observation frame (or its data) as JSON."""
        seed, options = self.split_reset_data(data)
        result = await self.with_timeout(env.reset(seed=seed, options=options), "reset")
        try:
            observation, info = result
        except (TypeError, ValueError):
            raise TypeError(
                f"{type(env).__name__}.reset() must return ResetResult(observation, info), "
                f"got {type(result).__name__}"
            ) from None
        self.stats.resets += 1
        return observation_frame_text(
            observation, reward=None, done=False, info=info, truncated=False, frame=frame
        )

    async def step_text(
        self,
        env: AsyncEnv[Any, Any],
        data: dict[str, Any],
        *,
        frame: bool,
        timeout: float | None = None,
    ) -> str:
        """Validate and apply one action; the observation frame (or its data) as JSON."""
        action = self.parse_action(env, data)
        if timeout is None and self.step_timeout is None:
            result = await env.step(action)  # no deadline: skip with_timeout's frame
        else:
            result = await self.with_timeout(env.step(action), "step", timeout)
        try:
            observation, reward, terminated, truncated, info = result
        except (TypeError, ValueError):
            raise TypeError(
                f"{type(env).__name__}.step() must return StepResult(observation, reward, "
                f"terminated, truncated, info), got {type(result).__name__}"
            ) from None
        self.stats.steps += 1
        return observation_frame_text(
            observation,
            reward=reward,
            done=bool(terminated or truncated),
            info=info,
            truncated=bool(truncated),
            frame=frame,
        )

    async def state_data(
        self, env: AsyncEnv[Any, Any], session: Session | None
    ) -> dict[str, Any]:
        """``await env.state()`` as a dict, with the session's episode bookkeeping filled in
        where the env leaves ``episode_id`` / ``step_count`` unset."""
        state = await self.with_timeout(env.state(), "state")
        if isinstance(state, State):
            data = state.model_dump(mode="json")
            fields_set = state.model_fields_set
        elif isinstance(state, dict):
            data = jsonable(state)
            fields_set = set(state)
        else:
            raise TypeError(
                f"{type(env).__name__}.state() must return a State, got {type(state).__name__}"
            )
        if session is not None:
            if data.get("episode_id") is None:
                data["episode_id"] = session.current_episode_id()
            if "step_count" not in fields_set:
                data["step_count"] = session.step_count
        return data

    # --- the /ws session loop -------------------------------------------------------

    async def _claim_session(
        self, websocket: AsgiWebSocket
    ) -> tuple[Session | None, bool, tuple[ErrorCode, str, dict[str, Any]] | None]:
        """The session this connection serves: ``(session, owned, refusal)``.

        A new one (owned), or an existing one named by ``?session_id=`` (attached); or
        the error frame to refuse the connection with."""
        if self.manager.shutting_down:
            return None, False, (ErrorCode.SESSION_ERROR, "server is shutting down; reconnect later", {})
        requested = websocket.query_param("session_id")
        if requested:
            session = self.manager.sessions.get(requested)
            if session is None:
                return None, False, (ErrorCode.SESSION_ERROR, f"Unknown session_id: {requested}", {})
            if session.attached:
                return None, False, (
                    ErrorCode.SESSION_ERROR,
                    f"Session {session.id} already has an attached WebSocket",
                    {},
                )
            session.attached = True
            return session, False, None
        try:
            session = await self.manager.open("ws")
        except CapacityError as e:
            extra = {"active_sessions": e.active_sessions, "max_sessions": e.max_sessions}
            return None, False, (ErrorCode.CAPACITY_REACHED, str(e), extra)
        except FactoryFailedError as e:
            logger.warning("%s", e, exc_info=e.__cause__)
            return None, False, (ErrorCode.FACTORY_ERROR, str(e), {"factory_name": e.factory_name})
        session.attached = True
        return session, True, None

    async def websocket_session(self, websocket: AsgiWebSocket) -> None:
        """Run one ``/ws`` connection: open (or attach to) a session, serve its frames,
        and always close the env when the session ends.

        As in OpenEnv, the handshake completes first and the env is made after it, so a
        slow factory delays the first reply rather than failing the client's connect
        timeout; a refused client reads why (an error frame), then the close."""
        session: Session | None = None
        owns = False
        reason = "disconnected"
        try:
            await websocket.accept()
            session, owns, refusal = await self._claim_session(websocket)
            if refusal is not None:
                code, message, extra = refusal
                await self._send_error(websocket, code, message, **extra)
                return
            assert session is not None
            session.last_active = self.clock()

            async def evict(why: str, message: str) -> None:
                await self._send_error(websocket, ErrorCode.SESSION_ERROR, message, reason=why)
                await websocket.close(code=1001, reason=why.replace("_", " "))

            session.on_evict = evict
            if await self._serve_frames(websocket, session):
                reason = "closed"
        except OSError:
            # The peer went away mid-send (uvicorn raises ClientDisconnected, an OSError;
            # AsgiWebSocket raises WebSocketGone, a ConnectionError).
            pass
        except Exception as e:  # noqa: BLE001 - the session must end cleanly whatever broke
            logger.exception("session %s failed", session.id if session else "(none)")
            try:
                await self._send_error(websocket, ErrorCode.SESSION_ERROR, self.describe(e))
            except Exception:
                pass
        finally:
            if session is not None:
                session.attached = False
                session.on_evict = None
                if owns or session.close_requested:
                    await self.manager.close(session, reason)  # type: ignore[arg-type]
            try:
                await websocket.close()
            except Exception:  # already closed by the peer, the reaper or shutdown
                pass

    async def _send_error(
        self, websocket: AsgiWebSocket, code: ErrorCode, message: str, **extra: Any
    ) -> None:
        self.stats.count_error(code.value)
        await websocket.send_text(error_frame_text(code, message, **extra))

    async def _serve_frames(self, websocket: AsgiWebSocket, session: Session) -> bool:
        """Answer frames until the client closes (True) or goes away (False)."""
        receive = websocket.receive
        send = websocket.send
        clock = self.clock
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                websocket.closed = True  # websocket.disconnect: the peer is gone
                return False
            if session.closed:
                return False
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            session.busy = True
            session.last_active = clock()
            try:
                reply = await self._answer(raw, session)
            finally:
                session.busy = False
                session.last_active = clock()
            if reply is _CLOSE:
                return True
            if websocket.closed:  # evicted (reaper, shutdown) while answering
                return False
            await send({"type": "websocket.send", "text": reply})

    async def _answer(self, raw: str | bytes, session: Session) -> Any:
        """The reply text to one raw frame (errors become error frames)."""
        try:
            frame = json.loads(raw)
        except ValueError as e:
            self.stats.count_error("INVALID_JSON")
            return error_frame_text(ErrorCode.INVALID_JSON, f"Invalid JSON: {e}")
        if type(frame) is not dict:
            return self._validation_error(
                f"a frame must be a JSON object, got {type(frame).__name__}",
                [_error("dict_type", [], "Input should be a valid dictionary", frame)],
            )
        kind = frame.get("type", "")
        allowed = _FRAME_KEYS.get(kind) if isinstance(kind, str) else None
        if allowed is None:
            self.stats.count_error("UNKNOWN_TYPE")
            return error_frame_text(
                ErrorCode.UNKNOWN_TYPE,
                f"Unknown message type: {kind}; expected one of {sorted(_FRAME_KEYS)}",
            )
        if len(frame) > len(allowed) or not allowed.issuperset(frame):
            extra = sorted(set(frame) - allowed)
            return self._validation_error(
                f"unexpected keys {extra} in a {kind!r} frame",
                [_error("extra_forbidden", [k], "Extra inputs are not permitted", frame[k]) for k in extra],
            )
        data = frame.get("data")
        if data is None and kind not in _NEEDS_DATA:
            data = {}
        if type(data) is not dict:
            return self._validation_error(
                f"'data' of a {kind!r} frame must be a JSON object",
                [_error("missing" if data is None else "dict_type", ["data"],
                        "Field required" if data is None else "Input should be a valid dictionary", data)],
            )
        env = session.env
        try:
            if kind == "step":
                text = await self.step_text(env, data, frame=True)
                session.step_count += 1
                return text
            if kind == "reset":
                text = await self.reset_text(env, data, frame=True)
                episode_id = data.get("episode_id")
                session.new_episode(episode_id if isinstance(episode_id, str) else None)
                return text
            if kind == "state":
                state = await self.state_data(env, session)
                return '{"type":"state","data":' + dumps_jsonable(state) + "}"
            if kind == "mcp":
                response = await handle_rpc(self, data, session=session)
                return '{"type":"mcp","data":' + dumps_jsonable(response) + "}"
            return _CLOSE  # "close"
        except InvalidActionError as e:
            return self._validation_error(e.message, jsonable(e.errors))
        except FrameError as e:
            return self._validation_error(str(e), e.errors)
        except OperationTimeout as e:
            self.stats.count_error("EXECUTION_ERROR")
            return error_frame_text(ErrorCode.EXECUTION_ERROR, str(e))
        except Exception as e:
            logger.debug("session %s: %s raised", session.id, kind, exc_info=True)
            self.stats.count_error("EXECUTION_ERROR")
            return error_frame_text(ErrorCode.EXECUTION_ERROR, self.describe(e))

    def _validation_error(self, message: str, errors: list[dict[str, Any]]) -> str:
        self.stats.count_error("VALIDATION_ERROR")
        return error_frame_text(ErrorCode.VALIDATION_ERROR, message, errors=errors)

    # --- WS /mcp: JSON-RPC only, one session per connection ----------------------------

    async def mcp_websocket(self, websocket: AsgiWebSocket) -> None:
        """``WS /mcp``: raw JSON-RPC 2.0 messages against one session's env."""
        session: Session | None = None
        try:
            await websocket.accept()
            try:
                session = await self.manager.open("ws")
            except CapacityError as e:
                await websocket.send_text(dumps_jsonable(rpc_error(
                    JsonRpcErrorCode.SERVER_ERROR, str(e), None,
                    {"active_sessions": e.active_sessions, "max_sessions": e.max_sessions},
                )))
                return
            except FactoryFailedError as e:
                await websocket.send_text(dumps_jsonable(rpc_error(
                    JsonRpcErrorCode.SERVER_ERROR, str(e), None, {"factory_name": e.factory_name}
                )))
                return
            session.attached = True

            async def evict(why: str, message: str) -> None:
                await websocket.close(code=1001, reason=why.replace("_", " "))

            session.on_evict = evict
            while True:
                message = await websocket.receive()
                if message["type"] != "websocket.receive":
                    websocket.closed = True  # the peer is gone
                    break
                if session.closed:
                    break
                raw = message.get("text") or message.get("bytes") or b""
                try:
                    request = json.loads(raw)
                except ValueError as e:
                    response = rpc_error(JsonRpcErrorCode.PARSE_ERROR, f"Parse error: {e}")
                else:
                    response = await handle_rpc(self, request, session=session)
                await websocket.send_text(dumps_jsonable(response))
        except OSError:  # the peer went away (see websocket_session)
            pass
        finally:
            if session is not None:
                session.attached = False
                session.on_evict = None
                await self.manager.close(session, "disconnected")
            try:
                await websocket.close()
            except Exception:
                pass
