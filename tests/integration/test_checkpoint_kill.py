"""kill -9 a process that saves checkpoints nonstop, at random moments: resume always finds a
complete checkpoint whose contents are exactly what that step wrote."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from forge_env.checkpoint import CheckpointConfig, Checkpointer

# 5M float32 = 20 MB, plus a second tensor and a JSON entry: a save takes long enough (write,
# hash, fsync, three files) for random kills to land inside it.
N = 5_000_000
TRIALS = 10

WRITER = textwrap.dedent(
    """
    import sys
    import torch
    from forge_env.checkpoint import CheckpointConfig, CheckpointError, Checkpointer

    N = int(sys.argv[2])
    ckpt = Checkpointer(CheckpointConfig(directory=sys.argv[1], keep=2))
    try:
        step, state = ckpt.load()  # what --resume does
        assert state["meta"]["step"] == step
        step += 1
    except CheckpointError:
        step = 0
    base = torch.arange(N, dtype=torch.float32)
    print("ready", step, flush=True)
    while True:
        ckpt.save(step, {
            "weights": base + step,
            "extra": torch.full((250_000,), step, dtype=torch.int32),
            "meta": {"step": step, "sum_hint": [step] * 3},
        })
        step += 1
    """
)


def check_matches_its_step(step: int, state: dict) -> None:
    assert list(state) == ["weights", "extra", "meta"]
    assert state["meta"] == {"step": step, "sum_hint": [step] * 3}
    assert torch.equal(state["extra"], torch.full((250_000,), step, dtype=torch.int32))
    assert torch.equal(state["weights"], torch.arange(N, dtype=torch.float32) + step)


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(CheckpointConfig(directory=str(directory), keep=2))
    rng = random.Random(1234)
    mid_save = mid_prune = 0
    last_step: int | None = None
    for trial in range(TRIALS):
        stderr = tmp_path / f"writer-{trial}.err"
        with open(stderr, "w") as err:
            proc = subprocess.Popen([sys.executable, str(script), str(directory), str(N)],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().split()
            assert ready[:1] == ["ready"], f"writer did not start: {stderr.read_text()[-2000:]}"
            # The writer resumed from the step after the last complete checkpoint.
            assert int(ready[1]) == (0 if last_step is None else last_step + 1)
            time.sleep(rng.uniform(0.05, 1.2))
            assert proc.poll() is None, f"writer died on its own: {stderr.read_text()[-2000:]}"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()

        leftovers = [n for n in os.listdir(directory) if n.startswith(".tmp-") and n.endswith(f"-{proc.pid}")]
        mid_save += any(n.startswith(".tmp-step_") for n in leftovers)
        mid_prune += any(n.startswith(".tmp-removed-") for n in leftovers)

        path = ckpt.latest()
        if path is None:
            # Killed before its first save completed: only possible while nothing was ever saved.
            assert last_step is None, f"trial {trial}: checkpoints vanished"
            continue
        step, state = ckpt.load()
        assert path.name == f"step_{step:06d}"
        check_matches_its_step(step, state)
        assert last_step is None or step >= last_step
        last_step = step
        # A kill between the new checkpoint's rename and the pruning leaves keep + 1.
        assert 1 <= len(ckpt.checkpoints()) <= 3

    assert last_step is not None and last_step >= TRIALS // 2, f"the writer made little progress: {last_step}"
    # The test exercised what it claims: some kills landed inside a save.
    assert mid_save >= 1, f"no kill landed mid-save in {TRIALS} trials"

    # The next save (this process) clears the dead writers' temp folders and prunes to keep.
    ckpt.save(last_step + 1, {"weights": torch.arange(N, dtype=torch.float32) + last_step + 1,
                              "extra": torch.full((250_000,), last_step + 1, dtype=torch.int32),
                              "meta": {"step": last_step + 1, "sum_hint": [last_step + 1] * 3}})
    assert sorted(os.listdir(directory)) == [f"step_{last_step:06d}", f"step_{last_step + 1:06d}"]
    step, state = ckpt.load()
    check_matches_its_step(step, state)
    print(f"{TRIALS} kills: {mid_save} mid-save, {mid_prune} mid-prune, reached step {step}")
