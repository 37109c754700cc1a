"""forge_env.tracking: jsonl, console lines, tensorboard, wandb (offline), plot, summary."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import struct
import sys
import time
from pathlib import Path

import pytest

from forge_env.tracking import (
    RunTracker,
    TrackingConfig,
    format_summary,
    plot_run,
    read_metrics,
    write_summary,
)
from forge_env.tracking._console import _eval_line, _format_duration, _train_line
from forge_env.tracking._tracker import _tag

FULL = {
    "reward/mean": 0.62,
    "success/rate": 0.62,
    "throughput/tokens_per_s": 1834.4,
    "policy_age/mean": 0.8,
    "util/learner": 0.71,
    "util/generator": 0.93,
    "time/step_s": 14.2,
}


def _config(tmp_path: Path, **kw: object) -> TrackingConfig:
    kw.setdefault("tensorboard", False)
    return TrackingConfig(output_dir=str(tmp_path / "run"), **kw)  # type: ignore[arg-type]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- config -------------------------------------------------------------------------------------


def test_config_defaults_and_checks(tmp_path: Path) -> None:
    config = TrackingConfig(output_dir=str(tmp_path))
    assert (config.console, config.jsonl, config.tensorboard, config.wandb) == (True, True, True, False)
    assert config.wandb_project == "forge-env" and config.console_every == 1
    with pytest.raises(ValueError, match="console_every"):
        TrackingConfig(output_dir=str(tmp_path), console_every=0)
    with pytest.raises(ValueError, match="output_dir"):
        TrackingConfig(output_dir="")


# -- jsonl ----------------------------------------------------------------------------------------


def test_jsonl_records_are_flushed_per_line(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    tracker = RunTracker(_config(tmp_path, console=False))
    tracker.log(1, {"step": 1, "reward/mean": 0.5, "loss/policy": float("nan"), "x/inf": float("inf"),
                    "note": "hello", "hist": [1, 2], "np/value": np.float32(0.25)})
    tracker.log(1, {"eval/success_rate": 0.75, "eval/episodes": 128}, kind="eval")
    # Still open: a killed run would keep both lines.
    records = _lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["train", "eval"]
    first = records[0]
    assert list(first)[:4] == ["step", "kind", "time", "elapsed_s"]
    assert first["step"] == 1 and first["reward/mean"] == 0.5
    assert first["loss/policy"] is None and first["x/inf"] is None  # NaN/inf -> null
    assert first["note"] == "hello" and first["hist"] == [1, 2] and first["np/value"] == 0.25
    assert first["time"] > 1.6e9 and 0 <= first["elapsed_s"] <= records[1]["elapsed_s"]
    assert records[1]["eval/episodes"] == 128
    tracker.close()
    tracker.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        tracker.log(2, {})


def test_log_rejects_conflicting_reserved_keys(tmp_path: Path) -> None:
    with RunTracker(_config(tmp_path, console=False)) as tracker:
        with pytest.raises(ValueError, match="step"):
            tracker.log(2, {"step": 3})
        with pytest.raises(ValueError, match="reserved"):
            tracker.log(2, {"time": 1.0})
        with pytest.raises(ValueError, match="int >= 0"):
            tracker.log(-1, {})


def test_resume_truncates_the_killed_tail_and_appends(tmp_path: Path) -> None:
    with RunTracker(_config(tmp_path, console=False)) as tracker:
        tracker.log(0, {"eval/success_rate": 0.3}, kind="eval")
        for step in range(1, 6):
            tracker.log(step, {"reward/mean": step / 10})
            if step % 2 == 0:
                tracker.log(step, {"eval/success_rate": step / 10}, kind="eval")
        tracker.log(75, {"loss": 1.0}, kind="sft")  # another step axis: kept
    path = tmp_path / "run" / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 6, "kind": "train", "rew')  # killed mid-line
    elapsed_at_3 = next(r["elapsed_s"] for r in read_metrics(path) if r["step"] == 3 and r["kind"] == "train")

    with RunTracker(_config(tmp_path, console=False), resume_from_step=3) as tracker:
        tracker.log(4, {"reward/mean": 4.0})
    records = read_metrics(path)
    assert [(r["kind"], r["step"]) for r in records] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("sft", 75), ("train", 4)
    ]
    assert records[-1]["reward/mean"] == 4.0
    # elapsed_s continues from the last kept line (the sft one, logged after step 3)
    assert records[-1]["elapsed_s"] >= records[-2]["elapsed_s"] >= elapsed_at_3


def test_fresh_tracker_on_existing_file_appends_after_repairing_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"step": 1, "kind": "train", "elapsed_s": 50.0}\n{"step": 2, "ki')
    with RunTracker(_config(tmp_path, console=False)) as tracker:
        tracker.log(2, {"reward/mean": 1.0})
    records = _lines(path)  # every line parses: the new record was not glued to the cut one
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["elapsed_s"] < 50.0  # not a resume: the clock starts again


def test_read_metrics_tolerates_a_truncated_last_line_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "a": null}\n\n{"step": 2, "kind": "train"}\n{"step": 3, "k')
    assert read_metrics(path) == [{"step": 1, "kind": "train", "a": None}, {"step": 2, "kind": "train"}]
    path.write_text('{"step": 1}\n{"step": 2, "k\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 "):
        read_metrics(path)
    path.write_text("")
    assert read_metrics(path) == []


# -- console --------------------------------------------------------------------------------------


def test_train_line_text() -> None:
    line = _train_line(12, FULL, total_steps=40, eta_s=400)
    assert line == (
        "step  12/40 | reward 0.62 | success 62% | 1,834 tok/s | age 0.8 | learner 71% gen 93% "
        "| 14.2 s/step | eta 6m40s"
    )
    assert _train_line(1, {"reward/mean": 0.5}, total_steps=40, eta_s=None) == "step   1/40 | reward 0.50"
    assert _train_line(7, {"util/generator": 0.5, "reward/mean": float("nan")}, total_steps=None,
                       eta_s=None) == "step   7 | reward n/a | gen 50%"
    assert [_format_duration(s) for s in (4.6, 400, 3720, float("nan"))] == ["5s", "6m40s", "1h02m", "n/a"]


def test_eval_line_text() -> None:
    assert _eval_line(10, {"eval/success_rate": 0.7109, "eval/episodes": 128}) == (
        "eval @ step 10: success 71% (128 held-out episodes)"
    )
    assert _eval_line(0, {"eval/success_rate": 0.02}) == "eval @ step 0: success 2%"


def test_console_prints_one_line_per_step_every_n(tmp_path: Path) -> None:
    out = io.StringIO()
    with RunTracker(_config(tmp_path, console_every=5), out=out, total_steps=12) as tracker:
        tracker.print("GRPO on guess_number")
        for step in range(1, 13):
            tracker.log(step, {**FULL, "reward/mean": step / 100})
            if step == 10:
                tracker.log(step, {"eval/success_rate": 0.5, "eval/episodes": 64}, kind="eval")
        tracker.log(12, {"loss": 0.1}, kind="sft")  # other kinds: no console line
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "GRPO on guess_number"
    assert [line.split("|")[0].strip() for line in lines[1:]] == [
        "step   5/12", "step  10/12", "eval @ step 10: success 50% (64 held-out episodes)", "step  12/12"
    ]
    assert "reward 0.05" in lines[1] and "eta " in lines[1] and "1,834 tok/s" in lines[1]
    assert "eta" not in lines[-1]  # the last step has nothing left to wait for


def test_eta_counts_down_to_a_time_limit_that_comes_before_the_last_step(tmp_path: Path) -> None:
    out = io.StringIO()
    with RunTracker(_config(tmp_path), out=out, total_steps=100) as tracker:
        tracker.log(1, FULL)                            # 14.2 s/step x 99 steps: 23m26s
        tracker.stop_by(time.monotonic() + 600)         # but time is up in 10 minutes
        tracker.log(1, FULL)
        tracker.stop_by(time.monotonic() + 3600)        # a limit after the last step changes nothing
        tracker.log(1, FULL)
    first, limited, unlimited = out.getvalue().splitlines()
    assert first.endswith("| eta 23m26s")
    assert re.search(r"\| eta (9m59s|10m00s) \(time limit\)$", limited), limited
    assert unlimited.endswith("| eta 23m26s")


def test_console_off_prints_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    with RunTracker(_config(tmp_path, console=False), out=out, total_steps=2) as tracker:
        tracker.print("hello")
        tracker.log(1, FULL)
        tracker.log(1, {"eval/success_rate": 0.5}, kind="eval")
    assert out.getvalue() == ""


# -- tensorboard ----------------------------------------------------------------------------------


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_and_resume_purge(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    config = _config(tmp_path, console=False, tensorboard=True)
    with RunTracker(config) as tracker:
        for step in (1, 2, 3):
            tracker.log(step, {"reward/mean": step / 10, "note": "text is skipped"})
        tracker.log(2, {"eval/success_rate": 0.5, "episodes": 64}, kind="eval")
        tracker.log(30, {"loss": 2.0}, kind="sft")
        assert tracker.tensorboard_dir == tmp_path / "run" / "tensorboard"
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    assert set(scalars) == {"reward/mean", "eval/success_rate", "eval/episodes", "sft/loss"}
    assert [(s, round(v, 4)) for s, v in scalars["reward/mean"]] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert scalars["eval/episodes"] == [(2, 64.0)]

    with RunTracker(config, resume_from_step=2) as tracker:
        tracker.log(3, {"reward/mean": 9.0})
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    assert [(s, round(v, 4)) for s, v in scalars["reward/mean"]] == [(1, 0.1), (2, 0.2), (3, 9.0)]


def test_missing_tensorboard_warns_and_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="forge_env.tracking"):
        with RunTracker(_config(tmp_path, console=False, tensorboard=True)) as tracker:
            tracker.log(1, {"reward/mean": 1.0})
            tracker.log(2, {"reward/mean": 1.0})
    assert tracker.tensorboard_dir is None
    warnings = [r for r in caplog.records if "tensorboard logging is off" in r.getMessage()]
    assert len(warnings) == 1 and "pip install tensorboard" in warnings[0].getMessage()
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


def test_tag_names() -> None:
    assert _tag("train", "reward/mean") == "reward/mean"
    assert _tag("eval", "eval/success_rate") == "eval/success_rate"
    assert _tag("eval", "episodes") == "eval/episodes"
    assert _tag("sft", "loss") == "sft/loss"


# -- wandb ----------------------------------------------------------------------------------------


def test_wandb_off_by_default_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would now raise
    with RunTracker(_config(tmp_path, console=False)) as tracker:
        tracker.log(1, {"reward/mean": 1.0})
    with pytest.raises(ImportError, match=r"pip install wandb.*logging\.wandb=false"):
        RunTracker(_config(tmp_path, console=False, wandb=True))


@pytest.mark.slow
def test_wandb_offline_writes_into_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's stdout capture alone
    config = _config(tmp_path, console=False, wandb=True, run_name="unit")
    with RunTracker(config, run_config={"lr": 1e-3, "nested": {"x": float("nan")}}) as tracker:
        tracker.log(1, {"reward/mean": 0.5, "note": "skipped"})
        tracker.log(1, {"eval/success_rate": 0.25}, kind="eval")
    run_id = (tmp_path / "run" / "wandb_run_id.txt").read_text().strip()
    run_files = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(run_files) == 1 and run_files[0].stat().st_size > 0

    with RunTracker(config, resume_from_step=1) as tracker:  # a resumed run keeps its W&B id
        tracker.log(2, {"reward/mean": 0.6})
    assert (tmp_path / "run" / "wandb_run_id.txt").read_text().strip() == run_id
    assert len(list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


# -- plot -----------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _write_run(path: Path, steps: int, *, evals: bool, nan_at: int | None = None) -> None:
    with RunTracker(TrackingConfig(output_dir=str(path), console=False, tensorboard=False)) as tracker:
        if evals:
            tracker.log(0, {"eval/success_rate": 0.38, "eval/episodes": 128}, kind="eval")
        for step in range(1, steps + 1):
            reward = float("nan") if step == nan_at else 0.3 + 0.4 * step / steps + 0.05 * math.sin(step)
            tracker.log(step, {"reward/mean": reward, "success/rate": reward})
            if evals and step % 10 == 0:
                tracker.log(step, {"eval/success_rate": 0.38 + step / 100, "eval/episodes": 128}, kind="eval")


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", 40, evals=True, nan_at=7)
    png = plot_run(tmp_path / "run" / "metrics.jsonl", tmp_path / "out" / "reward.png", title="GRPO",
                   baseline=0.38)
    assert png == tmp_path / "out" / "reward.png"
    assert _png_size(png) == (990, 770) and png.stat().st_size > 20_000
    assert [p.name for p in png.parent.iterdir()] == ["reward.png"]  # no temp file left behind


def test_plot_run_without_eval_points_and_with_nan(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", 5, evals=False, nan_at=2)
    png = plot_run(tmp_path / "run" / "metrics.jsonl", tmp_path / "a.png")
    assert _png_size(png) == (990, 770) and png.stat().st_size > 10_000
    # A run that logged nothing yet still gets a (labelled, empty) plot.
    (tmp_path / "empty.jsonl").write_text("")
    assert _png_size(plot_run(tmp_path / "empty.jsonl", tmp_path / "b.png", baseline=float("nan")))


def test_plot_run_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.jsonl").write_text("")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_run(tmp_path / "m.jsonl", tmp_path / "x.png")


# -- summary --------------------------------------------------------------------------------------


def test_summary_round_trip_and_format(tmp_path: Path) -> None:
    summary = {
        "baseline_success": 0.38, "final_success": 0.7109, "steps": 40, "wall_seconds": 712.4,
        "train_seconds": 600, "tokens_per_s": 1834.4, "output_dir": "runs/x", "hf_path": "runs/x/hf",
        "plot_path": tmp_path / "plot.png", "loss/last": float("nan"), "extra": {"a": 1},
    }
    path = write_summary(tmp_path / "deep" / "summary.json", summary)
    loaded = json.loads(path.read_text())
    assert loaded["loss/last"] is None and loaded["steps"] == 40 and loaded["extra"] == {"a": 1}
    assert loaded["plot_path"] == str(tmp_path / "plot.png")
    assert path.read_text().startswith('{\n  "baseline_success": 0.38,')  # indent 2
    assert format_summary(loaded).splitlines() == [
        "held-out success: 38.0% -> 71.1% (+33.1 points)",
        "steps: 40 in 11m52s (training 10m00s)",
        "throughput: 1,834 tokens/s",
        "output: runs/x",
        "model: runs/x/hf",
        f"plot: {tmp_path / 'plot.png'}",
    ]
    assert format_summary({"final_success": 0.5, "unknown": 1}) == "held-out success: 50.0%"
    assert format_summary({"baseline_success": 0.02, "wall_seconds": 30}) == (
        "held-out success before training: 2.0%\nwall time: 30s"
    )
    assert format_summary({}) == ""
