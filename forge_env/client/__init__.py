"""Talk to any OpenEnv-compatible environment server as if it were a local :class:`AsyncEnv`.

>>> from forge_env.client import RemoteEnv
>>> RemoteEnv("ws://127.0.0.1:8000/ws").url
'http://127.0.0.1:8000'
"""

from forge_env.client._remote import RemoteEnv
from forge_env.client._urls import ServerEndpoints

RemoteEnv.__module__ = "forge_env.client"
ServerEndpoints.__module__ = "forge_env.client"

__all__ = ["RemoteEnv", "ServerEndpoints"]
