"""The ``forge-env`` command line: serve, validate, play, list, build and run environments.

>>> from forge_env.cli import main
>>> # main(["list"])                                   # built-in envs
>>> # main(["serve", "guess_number", "--port", "8000"])  # blocks until Ctrl-C
>>> # main(["validate", "http://127.0.0.1:8000"])        # 0 when every required check passes
>>> # main(["build", "echo"])                            # Docker image forge-env/echo:latest
>>> # main(["run", "echo", "--port", "8000"])            # serve it in a container until Ctrl-C
"""

from forge_env.cli._main import CliError, build_parser, main

__all__ = ["CliError", "build_parser", "main"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
