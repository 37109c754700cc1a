"""What both generators share: a model folder, the version stamp, and their counters."""

from __future__ import annotations

from typing import Any, ClassVar

from forge_env.generator._base import Generator
from forge_env.generator._folder import read_model_folder

__all__ = ["FolderGenerator"]


class FolderGenerator(Generator):
    """A generator serving a local HF folder; subclasses call :meth:`_init_folder` first."""

    config: Any
    _COUNTERS: ClassVar[tuple[str, ...]] = ("requests", "tokens", "updates", "resampled", "aborted")

    def _init_folder(self, model: str, *, who: str) -> None:
        self._folder = read_model_folder(model, who=who)
        self._version = 0
        self._closed = False
        self._counters = dict.fromkeys(self._COUNTERS, 0)
        self._last_update_s = 0.0
        self._last_blocked_s = 0.0
        self._start_s = 0.0

    @property
    def version(self) -> int:
        return self._version

    @property
    def max_model_len(self) -> int:
        return int(self.config.max_model_len)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._folder.eos_token_ids

    @property
    def metrics(self) -> dict[str, float]:
        """``generator/requests`` (completions returned), ``generator/tokens`` (sampled
        tokens returned), ``generator/updates``, ``generator/update_s`` (the last update's
        wall time), ``generator/update_blocked_s`` (how long it held new requests back:
        in-flight requests draining or aborting, reload, resume), ``generator/resampled``
        (requests sampled again after an ``abort`` update), ``generator/aborted`` (completions
        returned with ``finish_reason="abort"``), ``generator/version`` and
        ``generator/start_s`` (engine start time); TorchGenerator adds ``generator/batches``."""
        out: dict[str, float] = {f"generator/{k}": v for k, v in self._counters.items()}
        out["generator/update_s"] = self._last_update_s
        out["generator/update_blocked_s"] = self._last_blocked_s
        out["generator/version"] = self._version
        out["generator/start_s"] = self._start_s
        return out
