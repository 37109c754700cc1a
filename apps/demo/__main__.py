"""``python -m apps.demo``: see :mod:`apps.demo`."""

from apps.demo._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
