"""Start environment servers and hand out sessions on them.

Three ways to run an environment, one :class:`EnvRuntime` Protocol:

- :class:`InProcessRuntime` — env instances in this process (no server, no sockets);
- :class:`LocalProcessRuntime` — a uvicorn server in a subprocess on a loopback port;
- :class:`DockerRuntime` — a container per server (any OpenEnv image) on a loopback port
  (:func:`build_env_image` builds an env's image).

Servers reached over the wire share :class:`ServerRuntime` (health wait, RemoteEnv sessions).

:class:`EnvPool` leases sessions across several runtimes, health-checks them and
restarts the dead ones. :func:`resolve_env_factory` / :func:`resolve_app` turn an ENV
spec (built-in name, env folder, ``module:attr``) into an env factory or a served app.

>>> from forge_env.runtime import EnvPool, LocalProcessRuntime
>>> pool = EnvPool(lambda: LocalProcessRuntime("guess_number"), size=2)
"""

from forge_env.runtime._base import BaseRuntime, EnvRuntime, RuntimeState
from forge_env.runtime._docker import (
    DEFAULT_BASE_IMAGE,
    DockerRuntime,
    ImageBuildError,
    build_env_image,
    env_image_tag,
    reap_orphans,
)
from forge_env.runtime._inprocess import InProcessRuntime
from forge_env.runtime._local import LocalProcessRuntime
from forge_env.runtime._pool import EnvPool
from forge_env.runtime._server_runtime import ServerRuntime
from forge_env.runtime._resolve import (
    EnvFactory,
    EnvSpecError,
    builtin_envs,
    resolve_app,
    resolve_env_factory,
)

__all__ = [
    "EnvRuntime",
    "BaseRuntime",
    "RuntimeState",
    "ServerRuntime",
    "InProcessRuntime",
    "LocalProcessRuntime",
    "DockerRuntime",
    "reap_orphans",
    "build_env_image",
    "env_image_tag",
    "ImageBuildError",
    "DEFAULT_BASE_IMAGE",
    "EnvPool",
    "EnvFactory",
    "EnvSpecError",
    "builtin_envs",
    "resolve_env_factory",
    "resolve_app",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and getattr(_obj, "__module__", "").startswith("forge_env.runtime."):
        try:
            _obj.__module__ = "forge_env.runtime"
        except (AttributeError, TypeError):
            pass
del _name, _obj
