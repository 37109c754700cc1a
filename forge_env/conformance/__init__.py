"""Conformance validator: judge any running server against the OpenEnv 0.10 wire.

Speaks plain HTTP and WebSocket, so it judges OpenEnv's own servers as well as ours.
``forge-env validate URL`` is its command-line face.

>>> import asyncio
>>> from forge_env.conformance import validate
>>> # report = asyncio.run(validate("http://127.0.0.1:8000"))
>>> # print(report.format_table()); report.passed
"""

from forge_env.conformance._report import CheckResult, ConformanceReport
from forge_env.conformance._schema_example import example_from_schema, required_fields
from forge_env.conformance._validate import normalize_url, validate

__all__ = [
    "CheckResult",
    "ConformanceReport",
    "example_from_schema",
    "required_fields",
    "normalize_url",
    "validate",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
