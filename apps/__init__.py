"""Runnable applications built on forge-env (``python -m apps.<name>``).

- ``apps.demo``: serve ``guess_number`` in a subprocess and play it with a scripted
  binary-search agent through :class:`~forge_env.RemoteEnv`.
"""
