"""Run model-written code in a sandbox: bubblewrap, nsjail, or (no boundary) plain rlimits.

>>> from forge_env.sandbox import run_code, SandboxLimits
>>> run_code("print(sum(range(10)))", limits=SandboxLimits(cpu_seconds=2)).stdout
'45\\n'
"""

from forge_env.sandbox._backends import BACKENDS, available_backends
from forge_env.sandbox._run import arun_code, run_code
from forge_env.sandbox._types import LimitHit, SandboxLimits, SandboxResult, SandboxUnavailableError

__all__ = [
    "BACKENDS",
    "LimitHit",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "arun_code",
    "available_backends",
    "run_code",
]
