"""``python -m apps.agent_grpo [--config FILE] [--resume] [key=value ...]``."""

import sys

from apps.agent_grpo._app import main

if __name__ == "__main__":
    sys.exit(main())
