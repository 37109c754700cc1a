"""Checkpointer: round trips, file kinds, pruning, what latest() skips, errors, RNG state."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from forge_env.checkpoint import CheckpointConfig, CheckpointError, Checkpointer, rng_state, set_rng_state


class Opaque:
    """A Python object torch.load(weights_only=True) refuses (module level so pickle finds it)."""

    def __init__(self, value: int) -> None:
        self.value = value


def make_checkpointer(tmp_path: Path, **kwargs: object) -> Checkpointer:
    return Checkpointer(CheckpointConfig(directory=str(tmp_path / "ckpt"), **kwargs))  # type: ignore[arg-type]


def trained_module_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(3, 4)).pow(2).sum().backward()
        opt.step()
    return model, opt


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def names(ckpt: Checkpointer) -> list[str]:
    return sorted(p.name for p in ckpt.directory.iterdir())


# --- round trips ----------------------------------------------------------------------------


def test_mixed_state_round_trips_exactly(tmp_path: Path) -> None:
    model, opt = trained_module_and_optimizer()
    meta = {"step": 12, "name": "run-a", "rewards": [0.5, -1.0, math.inf], "nested": {"ok": True, "none": None}}
    ckpt = make_checkpointer(tmp_path)
    path = ckpt.save(12, {"model": model.state_dict(), "optimizer": opt.state_dict(), "meta": meta,
                          "weights": torch.arange(6, dtype=torch.float16), "count": 7})

    assert path == ckpt.directory / "step_000012" and ckpt.latest() == path
    assert sorted(os.listdir(path)) == ["COMPLETE", "count.json", "meta.json", "model.pt", "optimizer.pt",
                                        "weights.pt"]
    manifest = json.loads((path / "COMPLETE").read_text())
    assert manifest["step"] == 12 and [f["key"] for f in manifest["files"]] == [
        "model", "optimizer", "meta", "weights", "count"]
    assert all(f["size"] == (path / f["file"]).stat().st_size for f in manifest["files"])

    step, state = ckpt.load()
    assert step == 12 and list(state) == ["model", "optimizer", "meta", "weights", "count"]
    assert state["meta"] == meta and state["count"] == 7
    assert state["weights"].dtype == torch.float16 and state["weights"].tolist() == [0, 1, 2, 3, 4, 5]
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor), name
    # The optimizer state (int keys, tuples, step tensors) restores into a fresh optimizer and
    # the next update is the same as the original's.
    model2, _ = trained_module_and_optimizer()
    model2.load_state_dict(state["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.8, 0.99) and opt2.param_groups[0]["lr"] == 1e-2
    x = torch.randn(3, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ({"a": [1, 2.5, "x", None, True]}, "json"),
        ([{"a": 1}], "json"),
        ("text", "json"),
        ({"a": (1, 2)}, "torch"),          # a tuple would come back from JSON as a list
        ({1: "int key"}, "torch"),          # an int key would come back as "1"
        ({"t": torch.zeros(2)}, "torch"),
    ],
)
def test_each_key_is_json_only_when_it_reads_back_equal(tmp_path: Path, value: object, kind: str) -> None:
    ckpt = make_checkpointer(tmp_path)
    path = ckpt.save(0, {"v": value})
    assert (path / ("v.json" if kind == "json" else "v.pt")).exists()
    loaded = ckpt.load()[1]["v"]
    if isinstance(value, dict) and "t" in value:
        assert torch.equal(loaded["t"], value["t"])
    else:
        assert loaded == value and type(loaded) is type(value)


def test_nan_and_shared_containers_round_trip(tmp_path: Path) -> None:
    shared = [1, 2]
    ckpt = make_checkpointer(tmp_path)
    ckpt.save(1, {"nan": {"x": math.nan}, "shared": {"a": shared, "b": shared}})
    state = ckpt.load()[1]
    assert math.isnan(state["nan"]["x"])
    # Shared references cannot be JSON; torch.save keeps them shared.
    assert (ckpt.directory / "step_000001" / "shared.pt").exists()
    assert state["shared"] == {"a": [1, 2], "b": [1, 2]} and state["shared"]["a"] is state["shared"]["b"]


@pytest.mark.slow  # builds the tiny model and two learners
def test_learner_and_buffer_state_round_trip_without_pickle(tmp_path: Path, tiny_model_path: str) -> None:
    from forge_env.buffer import BufferConfig, ReplayBuffer
    from forge_env.learner import Learner, LearnerConfig
    from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn

    config = LearnerConfig(model=tiny_model_path, lr=1e-3, device="cpu", warmup_steps=2, lr_schedule="cosine",
                           total_steps=10)
    traj = Trajectory(env_name="t", task=Task(seed=1), token_ids=list(range(5, 25)), logprobs=[0.0] * 20,
                      loss_mask=[0] * 5 + [1] * 15, prompt_len=5,
                      turns=[Turn(index=0, completion_start=5, completion_end=20, text="x", finish_reason="stop",
                                  version=0, reward=1.0)])
    learner = Learner(config)
    learner.sft_step([traj])
    buffer = ReplayBuffer(BufferConfig(capacity=4))
    buffer.add(TrajectoryGroup(task=Task(seed=1), trajectories=[traj, Trajectory(**{**traj.to_dict(),
                                                                                      "task": Task(seed=1)})]))
    ckpt = make_checkpointer(tmp_path)  # allow_pickle off: the learner state needs no pickle
    path = ckpt.save(1, {"learner": learner.state_dict(), "buffer": buffer.state_dict()})
    assert (path / "learner.pt").exists() and (path / "buffer.json").exists()

    _, state = ckpt.load()
    resumed = Learner(config)
    resumed.load_state_dict(state["learner"])
    buffer2 = ReplayBuffer(BufferConfig(capacity=4))
    buffer2.load_state_dict(state["buffer"])
    assert (resumed.step, resumed.version, resumed.lr) == (learner.step, learner.version, learner.lr)
    assert buffer2.state_dict() == buffer.state_dict()
    # Same next update: weights, AdamW moments and the LR schedule all came back.
    assert resumed.sft_step([traj])["loss/nll"] == learner.sft_step([traj])["loss/nll"]
    for (name, a), (_, b) in zip(learner.hf_named_tensors(), resumed.hf_named_tensors(), strict=True):
        assert torch.equal(a, b), name


# --- pruning, replacing, temp folders -------------------------------------------------------


def test_keep_prunes_the_oldest_complete_checkpoints(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path, keep=2)
    for step in range(1, 6):
        ckpt.save(step, {"meta": {"step": step}})
        assert len(ckpt.checkpoints()) == min(step, 2)
    assert names(ckpt) == ["step_000004", "step_000005"]
    assert ckpt.load(ckpt.directory / "step_000004")[1]["meta"] == {"step": 4}


def test_saving_a_step_again_replaces_it_and_drops_later_steps(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path, keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, {"meta": {"step": step, "run": "a"}})
    # A run resumed from step 2 saves step 2 again: step 3 belongs to the abandoned run.
    ckpt.save(2, {"meta": {"step": 2, "run": "b"}})
    assert names(ckpt) == ["step_000001", "step_000002"]
    assert ckpt.load() == (2, {"meta": {"step": 2, "run": "b"}})


def test_stale_temp_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path)
    ckpt.directory.mkdir()
    dead, alive = dead_pid(), os.getppid()
    for name in (f".tmp-step_000003-{dead}", f".tmp-removed-step_000001-{dead}", f".tmp-step_000003-{alive}"):
        (ckpt.directory / name).mkdir()
        (ckpt.directory / name / "model.pt").write_bytes(b"half")
    assert ckpt.latest() is None
    ckpt.save(4, {"meta": {}})
    assert names(ckpt) == [f".tmp-step_000003-{alive}", "step_000004"]


def test_unsavable_value_leaves_earlier_checkpoints_and_no_temp_folder(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path)
    ckpt.save(1, {"meta": {"step": 1}})
    with pytest.raises(CheckpointError, match=r"state\['fn'\] cannot be saved"):
        ckpt.save(2, {"meta": {"step": 2}, "fn": lambda: 0})
    assert names(ckpt) == ["step_000001"] and ckpt.load()[0] == 1


# --- what latest() skips --------------------------------------------------------------------


def test_latest_skips_incomplete_and_tampered_checkpoints(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = make_checkpointer(tmp_path, keep=10)
    for step in range(1, 6):
        ckpt.save(step, {"meta": {"step": step}, "w": torch.full((4,), float(step))})
    folder = {step: ckpt.directory / f"step_{step:06d}" for step in range(1, 6)}
    (folder[5] / "COMPLETE").unlink()                                     # save that did not finish
    (folder[4] / "meta.json").write_text('{"step": 9}')                    # same size, other bytes
    (folder[3] / "w.pt").write_bytes((folder[3] / "w.pt").read_bytes()[:-10])  # truncated
    (folder[2] / "COMPLETE").write_text("{not json")                      # garbled manifest
    assert ckpt.latest() == folder[1]
    step, state = ckpt.load()
    assert step == 1 and state["meta"] == {"step": 1} and torch.equal(state["w"], torch.ones(4))
    log = caplog.text
    assert "no COMPLETE marker" in log and "does not match its sha256" in log and "bytes, the manifest says" in log
    assert "unreadable manifest" in log
    # Sizes-only listing: the same-size edit of step 4 is only caught by the hash check.
    assert [p.name for p in ckpt.checkpoints()] == ["step_000001", "step_000004"]


def test_latest_is_none_for_missing_or_empty_directory(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path)
    assert ckpt.latest() is None and ckpt.checkpoints() == []
    ckpt.directory.mkdir()
    (ckpt.directory / "notes.txt").write_text("not a checkpoint")
    assert ckpt.latest() is None


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a/b", "", "../up", "a.b", "with space", 3])
def test_bad_key_names_are_refused(tmp_path: Path, key: object) -> None:
    ckpt = make_checkpointer(tmp_path)
    with pytest.raises(ValueError, match="not a simple name: use letters, digits"):
        ckpt.save(1, {key: 1})  # type: ignore[dict-item]
    assert not ckpt.directory.exists() or names(ckpt) == []


@pytest.mark.parametrize("step", [-1, True, 1.0, "3"])
def test_bad_steps_are_refused(tmp_path: Path, step: object) -> None:
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        make_checkpointer(tmp_path).save(step, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "message"), [({"keep": 0}, "keep must be an int >= 1"),
                                                 ({"directory": ""}, "directory must be a folder")])
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CheckpointConfig(**{"directory": "x", **kwargs})


def test_load_without_any_checkpoint_says_how_to_start(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint in .*ckpt: run without --resume"):
        ckpt.load()


def test_load_names_the_corrupt_file(tmp_path: Path) -> None:
    ckpt = make_checkpointer(tmp_path)
    path = ckpt.save(1, {"meta": {"a": 1}, "w": torch.zeros(3)})
    with open(path / "w.pt", "r+b") as f:  # flip bytes in place: same size
        f.seek(40)
        f.write(b"\xff\xfe\xfd")
    with pytest.raises(CheckpointError, match=r"w\.pt does not match its sha256"):
        ckpt.load(path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.load()


def test_load_names_a_file_that_matches_its_manifest_but_does_not_parse(tmp_path: Path) -> None:
    import hashlib

    ckpt = make_checkpointer(tmp_path)
    path = ckpt.save(1, {"w": torch.zeros(3)})
    garbage = b"this is not a torch file"
    (path / "w.pt").write_bytes(garbage)
    manifest = json.loads((path / "COMPLETE").read_text())
    manifest["files"][0].update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
    (path / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"checkpoint file .*w\.pt is corrupt"):
        ckpt.load()


@pytest.mark.parametrize("value", [Opaque(5), np.float64(5.0)], ids=["class", "numpy-scalar"])
def test_python_objects_need_allow_pickle(tmp_path: Path, value: object,
                                          caplog: pytest.LogCaptureFixture) -> None:
    ckpt = make_checkpointer(tmp_path)
    path = ckpt.save(1, {"obj": {"o": value}})
    # Said at save time already, not only hours later at resume.
    assert "state['obj'] holds Python objects" in caplog.text and "allow_pickle=True" in caplog.text
    refused = r"obj\.pt holds Python objects \(.+\) that torch.load\(weights_only=True\) refuses; .*allow_pickle=True"
    with pytest.raises(CheckpointError, match=refused):
        ckpt.load()
    # Without the manifest's list (an older manifest), torch.load's refusal gives the same advice.
    manifest = json.loads((path / "COMPLETE").read_text())
    del manifest["files"][0]["python_objects"]
    (path / "COMPLETE").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=refused):
        ckpt.load()
    step, state = make_checkpointer(tmp_path, allow_pickle=True).load()
    loaded = state["obj"]["o"]
    assert step == 1 and (loaded.value == 5 if isinstance(value, Opaque) else loaded == value)


# --- RNG ------------------------------------------------------------------------------------


def draw() -> tuple[float, float, list[float], float]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), float(np.random.randn())


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draw()
    np.random.randn()  # leaves a cached gaussian in numpy's state
    saved = rng_state()
    assert json.loads(json.dumps(saved)) == saved
    ckpt = make_checkpointer(tmp_path)
    ckpt.save(1, {"rng": saved})
    assert (ckpt.directory / "step_000001" / "rng.json").exists()
    first = [draw() for _ in range(3)]
    draw()  # move on, as a run would before it is killed
    set_rng_state(ckpt.load()[1]["rng"])
    assert [draw() for _ in range(3)] == first


def test_set_rng_state_refuses_other_dicts() -> None:
    with pytest.raises(ValueError, match="not an rng_state"):
        set_rng_state({"python": None})
