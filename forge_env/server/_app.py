"""``create_app``: serve any :class:`~forge_env.AsyncEnv` as an OpenEnv 0.10 FastAPI app."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from forge_env._exceptions import EpisodeNotStartedError, InvalidActionError
from forge_env._wire import JsonRpcErrorCode, jsonable
from forge_env.env._core import EnvMetadata
from forge_env.server._factory import EnvFactory, EnvFactoryLike, default_metadata
from forge_env.server._frames import dumps_jsonable
from forge_env.server._mcp import handle_rpc, rpc_error
from forge_env.server._server import EnvServer, FrameError, OperationTimeout
from forge_env.server._websocket import AsgiWebSocketMiddleware

__all__ = ["create_app", "OPENENV_API_VERSION"]

logger = logging.getLogger(__name__)

# The version of the OpenEnv HTTP API we implement, published as the OpenAPI
# info.version (openenv's validator reads it: "1.x" -> profile "openenv-http/1.x").
OPENENV_API_VERSION = "1.0.0"


class ResetRequest(BaseModel):
    """Body of ``POST /reset``: ``seed`` goes to ``reset(seed=)``, every other key
    (``episode_id`` included) into ``reset(options=)``."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": [{"seed": 42, "episode_id": "episode-001"}, {}]}
    )

    seed: int | None = Field(default=None, ge=0, description="Random seed for reproducible episodes")
    episode_id: str | None = Field(default=None, max_length=255, description="Custom episode identifier")


class StepRequest(BaseModel):
    """Body of ``POST /step``."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"action": {"value": 1}}]})

    action: dict[str, Any] = Field(..., description="Action fields, as in the env's action schema")
    timeout_s: float | None = Field(default=None, gt=0, description="Deadline for this step (seconds)")
    request_id: str | None = Field(default=None, max_length=255, description="Optional request id")


class ObservationResponse(BaseModel):
    """Body answering ``POST /reset`` and ``POST /step`` (OpenEnv's Reset/StepResponse)."""

    model_config = ConfigDict(extra="forbid")

    observation: dict[str, Any] = Field(..., description="The observation's fields")
    reward: float | None = Field(default=None, description="Reward of the last action")
    done: bool = Field(default=False, description="Episode over (terminated or truncated)")
    metadata: dict[str, Any] | None = Field(
        default=None, description="The env's info dict; truncated=true when the episode was cut"
    )


class HealthResponse(BaseModel):
    status: str = "healthy"


class SchemaResponse(BaseModel):
    action: dict[str, Any]
    observation: dict[str, Any]
    state: dict[str, Any]


def create_app(
    env_factory: EnvFactoryLike,
    *,
    max_sessions: int = 256,
    session_idle_timeout: float | None = 300.0,
    metadata: EnvMetadata | None = None,
    step_timeout: float | None = None,
    title: str | None = None,
) -> FastAPI:
    """A FastAPI app serving ``env_factory``'s envs over the OpenEnv 0.10 wire.

    Every ``/ws`` connection is one session with its own env instance; ``POST /reset``,
    ``POST /step`` and ``GET /state`` are stateless (a fresh env per request), as in
    OpenEnv. Counters are at ``GET /sessions`` and on ``app.state.stats``.

    >>> from forge_env.server import create_app
    >>> from forge_env import AsyncEnv, Action, Observation, ResetResult, StepResult
    >>> class Inc(Action):
    ...     by: int = 1
    >>> class Count(Observation):
    ...     n: int
    >>> class Counter(AsyncEnv[Count, Inc]):
    ...     action_type, observation_type = Inc, Count
    ...     async def reset(self, *, seed=None, options=None):
    ...         self.n = 0
    ...         return ResetResult(Count(n=0), {})
    ...     async def step(self, action):
    ...         self.n += action.by
    ...         return StepResult(Count(n=self.n), 1.0, self.n >= 3, False, {})
    >>> app = create_app(Counter, max_sessions=64)
    >>> app.state.stats.max_sessions
    64

    Args:
        env_factory: an ``AsyncEnv`` subclass, or a zero-argument callable (plain or
            ``async def``) returning a new ``AsyncEnv`` — called once per session.
        max_sessions: sessions served at once; one more gets ``CAPACITY_REACHED``.
        session_idle_timeout: seconds a session may go without a message before it is
            closed (its env's ``close()`` awaited); ``None`` keeps idle sessions forever.
        metadata: served at ``GET /metadata``; defaults to the env class's ``metadata``,
            else its name and docstring summary.
        step_timeout: deadline in seconds for each reset/step/state/tool call; past it
            the client gets ``EXECUTION_ERROR "step timed out after Ns"`` and the session
            stays usable. ``None`` (default) sets no deadline.
        title: the OpenAPI title; defaults to the env's name.

    Raises:
        TypeError: ``env_factory`` is an env instance, or a class that is not an AsyncEnv.
        ValueError: a limit is out of range, or the env class declares
            ``supports_concurrent_sessions = False`` while ``max_sessions > 1``.
    """
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
        raise ValueError(f"max_sessions must be an integer >= 1, got {max_sessions!r}")
    for name, value in (("session_idle_timeout", session_idle_timeout), ("step_timeout", step_timeout)):
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    factory = EnvFactory(env_factory)
    if factory.env_type is not None and not factory.env_type.supports_concurrent_sessions and max_sessions > 1:
        raise ValueError(
            f"{factory.env_type.__name__} declares supports_concurrent_sessions = False (its "
            f"instances share state), so it cannot serve max_sessions={max_sessions}: pass "
            "max_sessions=1, or make instances independent and set it to True"
        )
    server = EnvServer(
        factory,
        max_sessions=max_sessions,
        session_idle_timeout=session_idle_timeout,
        step_timeout=step_timeout,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.manager.start()
        try:
            yield
        finally:
            await server.manager.stop()

    env_name = (metadata.name if metadata else None) or (
        factory.env_type.__name__ if factory.env_type is not None else factory.name
    )
    app = FastAPI(
        title=title or f"{env_name} (forge-env, OpenEnv wire)",
        version=OPENENV_API_VERSION,
        description=(
            "An environment served by forge-env over the OpenEnv 0.10 wire. Stateful "
            "episodes live on the WebSocket `/ws` (one env per connection); `/reset`, "
            "`/step` and `/state` are stateless. JSON-RPC 2.0 MCP at `POST /mcp`."
        ),
        lifespan=lifespan,
    )
    app.state.env_server = server
    app.state.stats = server.stats
    _cache: dict[str, Any] = {}

    async def env_type() -> Any:
        return await factory.resolve_type()

    # --- stateless control --------------------------------------------------------

    def execution_failed(error: Exception) -> HTTPException:
        """The HTTP face of EXECUTION_ERROR, counted like the WebSocket one."""
        server.stats.count_error("EXECUTION_ERROR")
        detail = str(error) if isinstance(error, OperationTimeout) else server.describe(error)
        return HTTPException(status_code=500, detail=f"EXECUTION_ERROR: {detail}")

    async def scratch_env() -> Any:
        try:
            return await factory.create()
        except Exception as e:
            raise HTTPException(
                status_code=500,
                detail=f"FACTORY_ERROR: env factory {factory.name} failed: {server.describe(e)}",
            ) from e

    @app.post(
        "/reset",
        response_model=ObservationResponse,
        tags=["Environment Control"],
        summary="Reset a fresh environment (stateless; episodes live on /ws)",
    )
    async def reset(request: ResetRequest = Body(default_factory=ResetRequest)) -> Any:
        data = request.model_dump(exclude_unset=True)
        env = await scratch_env()
        try:
            text = await server.reset_text(env, data, frame=False)
        except FrameError as e:
            raise HTTPException(status_code=422, detail=e.errors) from e
        except Exception as e:
            raise execution_failed(e) from e
        finally:
            await server.close_scratch_env(env)
        return Response(content=text, media_type="application/json")

    @app.post(
        "/step",
        response_model=ObservationResponse,
        tags=["Environment Control"],
        summary="Step a fresh environment (stateless; episodes live on /ws)",
        responses={422: {"description": "The action does not match the action schema"}},
    )
    async def step(request: StepRequest) -> Any:
        env = await scratch_env()
        try:
            text = await server.step_text(
                env, request.action, frame=False, timeout=request.timeout_s
            )
        except InvalidActionError as e:
            server.stats.count_error("VALIDATION_ERROR")
            raise HTTPException(status_code=422, detail=jsonable(e.errors)) from e
        except EpisodeNotStartedError as e:
            # Not a server fault: this env needs reset() first, and HTTP /step is stateless.
            server.stats.count_error("EXECUTION_ERROR")
            raise HTTPException(
                status_code=409,
                detail=f"EXECUTION_ERROR: {server.describe(e)}. HTTP POST /step is stateless "
                "(a fresh env per request, as in OpenEnv), so this env cannot be stepped "
                "here: run episodes over the WebSocket session at /ws (e.g. RemoteEnv)",
            ) from e
        except Exception as e:
            raise execution_failed(e) from e
        finally:
            await server.close_scratch_env(env)
        return Response(content=text, media_type="application/json")

    @app.get("/state", tags=["State Management"], summary="State of a fresh environment")
    async def state() -> dict[str, Any]:
        env = await scratch_env()
        try:
            return await server.state_data(env, None)
        except Exception as e:
            raise execution_failed(e) from e
        finally:
            await server.close_scratch_env(env)

    # --- info ---------------------------------------------------------------------

    @app.get("/health", response_model=HealthResponse, tags=["Health"], summary="Health check")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/metadata", response_model=EnvMetadata, tags=["Environment Info"], summary="Environment metadata")
    async def get_metadata() -> EnvMetadata:
        if "metadata" not in _cache:
            _cache["metadata"] = metadata or default_metadata(await env_type())
        return _cache["metadata"]

    @app.get("/schema", response_model=SchemaResponse, tags=["Schema"], summary="JSON schemas of action, observation, state")
    async def get_schema() -> dict[str, Any]:
        if "schema" not in _cache:
            cls = await env_type()
            _cache["schema"] = {
                "action": cls.action_type.model_json_schema(),
                "observation": cls.observation_type.model_json_schema(),
                "state": cls.state_type.model_json_schema(),
            }
        return _cache["schema"]

    @app.get("/sessions", tags=["Health"], summary="Session counters of this server")
    async def sessions() -> dict[str, Any]:
        """Active/total/reaped sessions, capacity, and error frames sent by code."""
        return server.stats.snapshot()

    # --- MCP ----------------------------------------------------------------------

    @app.post("/mcp", tags=["MCP"], summary="MCP JSON-RPC 2.0 (tools/list, tools/call)")
    async def mcp(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            response = rpc_error(JsonRpcErrorCode.PARSE_ERROR, "Parse error")
        else:
            response = await handle_rpc(server, body)
        return Response(content=dumps_jsonable(response), media_type="application/json")

    # --- WebSockets ---------------------------------------------------------------

    # WS /ws (sessions) and WS /mcp run on raw ASGI messages rather than as FastAPI
    # routes: every env step passes through them, and starlette's WebSocket wrapper plus
    # the routing layers cost 2-5 % of the server's CPU per step (see _websocket.py).
    # Middlewares added to the app later still wrap these connections.
    app.add_middleware(
        AsgiWebSocketMiddleware,
        handlers={"/ws": server.websocket_session, "/mcp": server.mcp_websocket},
    )
    return app
