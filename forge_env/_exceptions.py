"""The exceptions forge-env raises, one tree so callers can catch at the level they need.

    ForgeEnvError
    ├── EnvError                      the environment itself refused or failed
    │   ├── InvalidActionError        the action does not match the action schema
    │   ├── EnvExecutionError         reset/step raised inside the environment
    │   └── EpisodeNotStartedError    step() before reset(), or after the episode ended
    ├── TransportError                talking to a remote environment failed
    │   ├── ConnectError              no server at that URL / handshake failed
    │   ├── EnvTimeoutError           connect or message deadline passed
    │   ├── ConnectionClosedError     the server went away mid-session
    │   └── ServerError               the server answered with an OpenEnv error envelope
    │       ├── InvalidJSONError          code INVALID_JSON
    │       ├── UnknownMessageTypeError   code UNKNOWN_TYPE
    │       ├── ValidationFailedError     code VALIDATION_ERROR (also an InvalidActionError)
    │       ├── RemoteExecutionError      code EXECUTION_ERROR (also an EnvExecutionError)
    │       ├── CapacityReachedError      code CAPACITY_REACHED
    │       ├── FactoryError              code FACTORY_ERROR
    │       └── SessionError              code SESSION_ERROR
    ├── RuntimeStartError             an env server could not be started / became unhealthy
    └── EnvSpecError                  an ENV spec names nothing runnable (forge_env.runtime;
                                      also a ValueError)

Every error carries the context we have (``env_name``, ``session_id``, ``url``) so a log
line names what failed; messages say what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ForgeEnvError",
    "EnvError",
    "InvalidActionError",
    "EnvExecutionError",
    "EpisodeNotStartedError",
    "TransportError",
    "ConnectError",
    "EnvTimeoutError",
    "ConnectionClosedError",
    "ServerError",
    "InvalidJSONError",
    "UnknownMessageTypeError",
    "ValidationFailedError",
    "RemoteExecutionError",
    "CapacityReachedError",
    "FactoryError",
    "SessionError",
    "RuntimeStartError",
    "server_error_from_envelope",
]


class ForgeEnvError(Exception):
    """Root of every forge-env error.

    Args:
        message: what went wrong and, where we know it, how to fix it.
        env_name: the environment involved, if known.
        session_id: the server-side session involved, if known.
        url: the server URL involved, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        env_name: str | None = None,
        session_id: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.env_name = env_name
        self.session_id = session_id
        self.url = url

    def __str__(self) -> str:
        context = [
            f"{k}={v}"
            for k, v in (("env", self.env_name), ("session", self.session_id), ("url", self.url))
            if v
        ]
        return f"{self.message} [{', '.join(context)}]" if context else self.message


class EnvError(ForgeEnvError):
    """The environment refused or failed an operation."""


class InvalidActionError(EnvError):
    """The action does not validate against the environment's action type.

    ``errors`` holds pydantic's error list (``loc``, ``msg``, ``type``) when available.
    """

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None, **ctx: Any):
        super().__init__(message, **ctx)
        self.errors = errors or []


class EnvExecutionError(EnvError):
    """reset() or step() raised inside the environment."""


class EpisodeNotStartedError(EnvError):
    """step() was called before reset() (or after the episode ended, for envs that care)."""


class TransportError(ForgeEnvError):
    """Talking to a remote environment server failed."""


class ConnectError(TransportError):
    """Could not reach the server or complete the WebSocket handshake."""


class EnvTimeoutError(TransportError, TimeoutError):
    """A connect or message deadline passed."""


class ConnectionClosedError(TransportError):
    """The server closed the session (crashed, restarted, reaped it as idle, or shut down)."""


class ServerError(TransportError):
    """The server answered with an OpenEnv error envelope ``{"type": "error", "data": {...}}``.

    Attributes:
        code: the OpenEnv error code (``ErrorCode`` value), e.g. ``"EXECUTION_ERROR"``.
        data: the whole ``data`` object of the envelope (extra fields included).
    """

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, data: dict[str, Any] | None = None, **ctx: Any):
        super().__init__(message, **ctx)
        self.data = dict(data or {})
        self.code = str(self.data.get("code", type(self).code))


class InvalidJSONError(ServerError):
    """Code INVALID_JSON: the server could not parse the frame we sent."""

    code = "INVALID_JSON"


class UnknownMessageTypeError(ServerError):
    """Code UNKNOWN_TYPE: the server does not know the frame's ``type``."""

    code = "UNKNOWN_TYPE"


class ValidationFailedError(ServerError, InvalidActionError):
    """Code VALIDATION_ERROR: the message or action failed the server's schema.

    ``errors`` is pydantic's error list as sent by the server.
    """

    code = "VALIDATION_ERROR"

    def __init__(self, message: str, *, data: dict[str, Any] | None = None, **ctx: Any):
        ServerError.__init__(self, message, data=data, **ctx)
        self.errors = list((data or {}).get("errors") or [])


class RemoteExecutionError(ServerError, EnvExecutionError):
    """Code EXECUTION_ERROR: the environment raised while handling reset/step/state."""

    code = "EXECUTION_ERROR"


class CapacityReachedError(ServerError):
    """Code CAPACITY_REACHED: the server already runs ``max_sessions`` sessions.

    The server closes the connection after sending this. Retry later, or start more
    servers (``EnvPool``), or raise the server's ``--max-sessions``.
    """

    code = "CAPACITY_REACHED"

    @property
    def active_sessions(self) -> int | None:
        return self.data.get("active_sessions")

    @property
    def max_sessions(self) -> int | None:
        return self.data.get("max_sessions")


class FactoryError(ServerError):
    """Code FACTORY_ERROR: the server could not create an environment for this session."""

    code = "FACTORY_ERROR"


class SessionError(ServerError):
    """Code SESSION_ERROR: the session failed outside reset/step (e.g. it could not be set up)."""

    code = "SESSION_ERROR"


class RuntimeStartError(ForgeEnvError):
    """An environment server could not be started or did not become healthy in time.

    ``logs`` holds the tail of the server's output, when there is one.
    """

    def __init__(self, message: str, *, logs: str = "", **ctx: Any):
        super().__init__(message, **ctx)
        self.logs = logs

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n--- server log (tail) ---\n{self.logs}" if self.logs else base


_BY_CODE: dict[str, type[ServerError]] = {
    cls.code: cls
    for cls in (
        InvalidJSONError,
        UnknownMessageTypeError,
        ValidationFailedError,
        RemoteExecutionError,
        CapacityReachedError,
        FactoryError,
        SessionError,
    )
}


def server_error_from_envelope(data: dict[str, Any], **ctx: Any) -> ServerError:
    """Build the exception for an OpenEnv error envelope's ``data`` (unknown codes -> ServerError)."""
    code = str(data.get("code", ""))
    message = str(data.get("message") or f"server error {code or '(no code)'}")
    cls = _BY_CODE.get(code, ServerError)
    return cls(f"{code}: {message}" if code else message, data=data, **ctx)
