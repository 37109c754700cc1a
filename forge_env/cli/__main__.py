"""``python -m forge_env.cli ...`` is the same as ``forge-env ...``."""

from forge_env.cli._main import main

if __name__ == "__main__":
    raise SystemExit(main())
