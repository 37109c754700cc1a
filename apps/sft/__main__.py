"""``python -m apps.sft``: see :mod:`apps.sft`."""

from apps.sft._sft import main

if __name__ == "__main__":
    raise SystemExit(main())
