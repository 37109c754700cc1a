"""The generator contract: token ids in, sampled token ids and their logprobs out.

A generator never sees text. Agents tokenize prompts; the generator samples; the rollout
keeps exactly the ids and logprobs it returns, so training uses the tokens that were sampled.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from forge_env._exceptions import ForgeEnvError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Completion",
    "FinishReason",
    "Generator",
    "GeneratorError",
    "InFlightPolicy",
    "SamplingParams",
]

FinishReason = Literal["stop", "length", "abort"]
"""``stop``: an EOS/stop token was sampled (and is the last id); ``length``: ``max_tokens``
or the context limit was reached; ``abort``: the request was cancelled."""

InFlightPolicy = Literal["finish", "abort"]
"""What a weight update does to requests already generating: ``finish`` lets them complete
on the old weights (new requests wait), ``abort`` cancels them and samples them again from
the start on the new weights. Either way every completion comes from one policy version."""


class GeneratorError(ForgeEnvError):
    """The generator failed (engine died, bad prompt, bad weights); the message says why."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample one completion.

    >>> SamplingParams(max_tokens=8, temperature=0.0).greedy
    True
    """

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 = no top-k cut."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra ids that end the completion (the tokenizer's EOS always does)."""
    seed: int | None = None
    """Per-request seed for reproducible sampling; None = the generator's stream."""
    ignore_eos: bool = False
    """Keep sampling past the tokenizer's EOS ids (``stop_token_ids`` still end the
    completion): equal-length completions for benchmarks."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """What the generator sampled for one prompt.

    ``logprobs[i]`` is the log-probability of ``token_ids[i]`` under the distribution it was
    sampled from: the model's logits divided by the temperature (with the default
    ``top_p=1, top_k=0`` this is exactly the sampling distribution; a learner computing
    importance ratios divides its logits by the same temperature). Greedy requests report
    the untempered logprobs. With ``top_p < 1`` or ``top_k > 0`` it is the log-probability
    under the truncated, renormalised distribution actually sampled from (vLLM's
    ``processed_logprobs``). ``len(logprobs) == len(token_ids)``.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    version: int
    """Policy version of the weights that sampled every token of this completion."""
    prompt_len: int
    seconds: float = 0.0
    """Wall time from submit to the last token (queueing included)."""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"{len(self.token_ids)} token ids but {len(self.logprobs)} logprobs"
            )


class Generator(abc.ABC):
    """Samples completions from token ids; its weights can be replaced while it serves.

    Implementations: :class:`~forge_env.generator.VLLMGenerator` (vLLM's async engine) and
    :class:`~forge_env.generator.TorchGenerator` (plain torch, for platforms without vLLM).
    Many ``generate`` calls may run concurrently (``asyncio.gather``); implementations batch
    them.

    Example::

        gen = VLLMGenerator(VLLMGeneratorConfig(model="tiny"))
        await gen.start()
        out = await gen.generate(prompt_ids, SamplingParams(max_tokens=16))
        await gen.update_weights(model.state_dict().items(), version=1)
        await gen.close()
    """

    @property
    @abc.abstractmethod
    def version(self) -> int:
        """Policy version of the weights now loaded (0 = the initial weights)."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Longest prompt + completion, in tokens."""

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end a completion with ``finish_reason="stop"``."""
        return ()

    @property
    def metrics(self) -> dict[str, float]:
        """Counters under ``generator/`` keys (requests, tokens, updates, ...); {} if none."""
        return {}

    async def start(self) -> None:
        """Load the model / start the engine. Idempotent; ``generate`` calls it if needed."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample one completion for ``prompt_ids``.

        Raises:
            GeneratorError: the prompt is empty or longer than ``max_model_len``, or the
                engine failed.
        """

    @abc.abstractmethod
    async def update_weights(
        self, named_tensors: Iterable[tuple[str, "torch.Tensor"]], version: int
    ) -> None:
        """Load new weights (HF parameter names, e.g. ``model.layers.0.mlp.up_proj.weight``)
        in place, without restarting, and stamp later completions with ``version``.

        Requests in flight follow the generator's :data:`InFlightPolicy`.
        """

    async def close(self) -> None:
        """Stop the engine and free its memory. Idempotent."""

    async def __aenter__(self) -> "Generator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
