"""The result of a conformance run: one :class:`CheckResult` per check, and a summary."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["CheckResult", "ConformanceReport"]


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one conformance check.

    >>> CheckResult("health", passed=True, required=True, detail="ok", duration_s=0.002).status
    'PASS'

    Attributes:
        name: short identifier, e.g. ``"ws_reset"``.
        passed: the server behaved as the OpenEnv wire requires (a skipped check passes).
        required: a failure makes the whole report fail; optional checks only warn.
        detail: what was seen, or why it is wrong and what the server should do instead.
        duration_s: wall time of the check.
        skipped: the check did not apply to this server (e.g. no HTTP ``/step`` route).
        description: one line saying what the check asks of the server.
    """

    name: str
    passed: bool
    required: bool
    detail: str = ""
    duration_s: float = 0.0
    skipped: bool = False
    description: str = ""

    @property
    def status(self) -> str:
        """``PASS``, ``SKIP``, ``FAIL`` (required) or ``WARN`` (optional and failed)."""
        if self.skipped:
            return "SKIP"
        if self.passed:
            return "PASS"
        return "FAIL" if self.required else "WARN"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "passed": self.passed,
            "required": self.required,
            "skipped": self.skipped,
            "detail": self.detail,
            "duration_ms": round(self.duration_s * 1000, 3),
        }


@dataclasses.dataclass(slots=True)
class ConformanceReport:
    """Everything :func:`~forge_env.conformance.validate` found about one server.

    >>> r = ConformanceReport("http://127.0.0.1:8000", [
    ...     CheckResult("health", True, True), CheckResult("ws_concurrent", False, False)])
    >>> r.passed, [c.name for c in r.failures], [c.name for c in r.warnings]
    (True, [], ['ws_concurrent'])
    """

    url: str
    checks: list[CheckResult] = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    api_version: str | None = None
    env_name: str | None = None

    @property
    def passed(self) -> bool:
        """True when every required check passed."""
        return all(c.passed for c in self.checks if c.required)

    @property
    def failures(self) -> list[CheckResult]:
        """Required checks that failed."""
        return [c for c in self.checks if c.required and not c.passed]

    @property
    def warnings(self) -> list[CheckResult]:
        """Optional checks that failed."""
        return [c for c in self.checks if not c.required and not c.passed]

    def check(self, name: str) -> CheckResult:
        """The result of the check called ``name`` (KeyError names the known checks)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks are {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        required = [c for c in self.checks if c.required]
        return {
            "url": self.url,
            "passed": self.passed,
            "env_name": self.env_name,
            "api_version": self.api_version,
            "duration_ms": round(self.duration_s * 1000, 3),
            "summary": {
                "checks": len(self.checks),
                "required": len(required),
                "required_passed": sum(c.passed for c in required),
                "failed": [c.name for c in self.failures],
                "warnings": [c.name for c in self.warnings],
            },
            "checks": [c.to_dict() for c in self.checks],
        }

    def format_table(self, *, width: int = 100) -> str:
        """A plain-text table of the checks and a summary line (what ``forge-env validate``
        prints)."""
        name_w = max([len(c.name) for c in self.checks] + [5])
        header = f"{'CHECK':<{name_w}}  RESULT  {'TIME':>9}  DETAIL"
        lines = [header, "-" * min(width, max(len(header), 60))]
        detail_w = max(20, width - name_w - 22)
        for c in self.checks:
            detail = " ".join(c.detail.split())
            if len(detail) > detail_w:
                detail = detail[: detail_w - 3] + "..."
            ms = f"{c.duration_s * 1000:.1f} ms"
            lines.append(f"{c.name:<{name_w}}  {c.status:<6}  {ms:>9}  {detail}")
        required = [c for c in self.checks if c.required]
        verdict = "PASSED" if self.passed else "FAILED"
        summary = (
            f"{verdict}: {sum(c.passed for c in required)}/{len(required)} required checks passed"
        )
        extras = []
        if self.warnings:
            extras.append(f"{len(self.warnings)} optional warning(s)")
        skipped = sum(c.skipped for c in self.checks)
        if skipped:
            extras.append(f"{skipped} skipped")
        if extras:
            summary += f" ({', '.join(extras)})"
        summary += f" in {self.duration_s:.2f} s"
        lines.append("-" * min(width, max(len(header), 60)))
        lines.append(summary)
        return "\n".join(lines)
