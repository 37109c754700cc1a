"""The process-wide random number generators' states as plain JSON data, for checkpoints.

Covers Python's ``random`` module, numpy's legacy global generator (``np.random.*``, when
numpy is importable) and torch's default CPU generator, plus the CUDA generators when CUDA is
initialized. Objects that own their RNG (``ReplayBuffer``'s ``random.Random``, a
``torch.Generator`` you created) save it in their own state.
"""

from __future__ import annotations

import base64
import logging
import random
from typing import Any

__all__ = ["rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)

_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The global RNG states, JSON-able (a checkpoint stores them as ``<key>.json``).

    >>> import random, torch
    >>> saved = rng_state()
    >>> first = (random.random(), torch.rand(1).item())
    >>> set_rng_state(saved)
    >>> (random.random(), torch.rand(1).item()) == first
    True

    Returns:
        ``{"format", "python", "numpy" (None without numpy), "torch", "cuda" (None unless CUDA
        is initialized)}``; torch states are base64 strings of their bytes.
    """
    import torch

    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "format": _FORMAT,
        "python": [version, list(internal), gauss_next],
        "numpy": _numpy_state(),
        "torch": _encode(torch.get_rng_state()),
        "cuda": None,
    }
    # Only when CUDA is initialized: asking earlier would initialize it (and nothing has drawn
    # from the CUDA generators yet, so their seeded state is already reproducible).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (parts that are None or absent are left as they are).

    Raises:
        ValueError: ``state`` is not :func:`rng_state` output.
    """
    import torch

    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"not an rng_state() dict (format {got!r}, expected {_FORMAT}): pass what rng_state() returned")
    if state.get("python") is not None:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
    if state.get("numpy") is not None:
        _set_numpy_state(state["numpy"])
    if state.get("torch") is not None:
        torch.set_rng_state(_decode(state["torch"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [_decode(s) for s in state["cuda"]]
        count = torch.cuda.device_count()
        if len(cuda) != count:
            logger.warning("restoring %d saved CUDA RNG states on %d devices: the first %d are restored",
                           len(cuda), count, min(len(cuda), count))
        for device, s in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(s, device)


def _numpy_state() -> dict[str, Any] | None:
    try:
        import numpy as np
    except ImportError:
        return None
    s = np.random.get_state(legacy=False)
    return {
        "bit_generator": s["bit_generator"],
        "key": [int(k) for k in s["state"]["key"]],
        "pos": int(s["state"]["pos"]),
        "has_gauss": int(s["has_gauss"]),
        "gauss": float(s["gauss"]),
    }


def _set_numpy_state(saved: dict[str, Any]) -> None:
    try:
        import numpy as np
    except ImportError:
        return  # nothing in this process can draw from numpy's generator
    np.random.set_state({
        "bit_generator": saved["bit_generator"],
        "state": {"key": np.asarray(saved["key"], dtype=np.uint32), "pos": saved["pos"]},
        "has_gauss": saved["has_gauss"],
        "gauss": saved["gauss"],
    })


def _encode(tensor: Any) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode(text: str) -> Any:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
