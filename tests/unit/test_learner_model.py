"""The learner on torchtitan's real Qwen3/Llama3 modules and the tiny model (CPU, fp32).

HF <-> torchtitan round trips (``from_hf`` / ``to_hf``), config reading, and the training step:
direction of the update, gradient accumulation, the loss normaliser, checkpoints, validation.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from forge_env.learner import HFShape, Learner, LearnerConfig, LossConfig, TitanModel, read_hf_shape
from forge_env.models import TinyModelConfig, build_tiny_model
from forge_env.rollout import Task, Trajectory

PROMPT_LEN = 4
ADVANTAGES = (1.0, 1.0, -1.0, -1.0)
LENGTHS = (12, 20, 7, 16)


@pytest.fixture(scope="module")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny model with the Llama architecture (tied embeddings), built once (~5 s)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama",
                                TinyModelConfig(architecture="llama")))


def sequences(seed: int = 0, lengths: tuple[int, ...] = LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in lengths]


def trajectories(seqs: list[list[int]], logprobs: list[torch.Tensor] | None = None) -> list[Trajectory]:
    """Prompt of PROMPT_LEN tokens, the rest 'sampled'; behaviour logprobs given or random."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i, ids in enumerate(seqs):
        mask = [0] * PROMPT_LEN + [1] * (len(ids) - PROMPT_LEN)
        noise = -3 * torch.rand(len(ids), generator=g)
        lp = logprobs[i].tolist() if logprobs is not None else noise.tolist()
        out.append(Trajectory(env_name="hand", task=Task(seed=i), token_ids=ids,
                              logprobs=[v if m else 0.0 for v, m in zip(lp, mask)], loss_mask=mask))
    return out


def advantages(trajs: list[Trajectory], values: tuple[float, ...] = ADVANTAGES) -> list[list[float]]:
    return [[a * m for m in t.loss_mask] for a, t in zip(values, trajs)]


def params(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.named_parameters()}


# --- HF <-> torchtitan ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_from_hf_then_to_hf_gives_the_original_safetensors_exactly(
    arch: str, tiny_model_path: str, tiny_llama_path: str, tmp_path: Path
) -> None:
    source = Path(tiny_model_path if arch == "qwen3" else tiny_llama_path)
    original = load_file(str(source / "model.safetensors"))
    tm = TitanModel(source)
    assert tm.family == ("qwen3" if arch == "qwen3" else "llama3")
    # Tied: one parameter shared by the embedding and the output head, as in HF.
    model: Any = tm.model
    assert model.tok_embeddings.weight is model.lm_head.weight
    assert tm.num_parameters() == sum(t.numel() for t in original.values())

    exported = tm.hf_state_dict()
    assert sorted(exported) == sorted(original)  # no lm_head.weight: the checkpoint ties it
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name

    folder = tm.save_hf(tmp_path / "out")
    saved = load_file(str(folder / "model.safetensors"))
    assert sorted(saved) == sorted(original)
    assert all(torch.equal(saved[k], original[k]) for k in original)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name


def test_hf_named_tensors_are_a_snapshot(tiny_model_path: str) -> None:
    tm = TitanModel(tiny_model_path)
    snapshot = dict(tm.hf_named_tensors())
    before = snapshot["model.norm.weight"].clone()
    model: Any = tm.model
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    assert torch.equal(snapshot["model.norm.weight"], before)
    assert dict(tm.hf_named_tensors(dtype=torch.bfloat16))["model.norm.weight"].dtype == torch.bfloat16


def test_read_hf_shape_maps_the_config(tiny_model_path: str) -> None:
    shape = read_hf_shape(tiny_model_path)
    tiny = TinyModelConfig()
    assert shape == HFShape(
        family="qwen3", vocab_size=tiny.vocab_size, dim=tiny.hidden_size, n_layers=tiny.num_hidden_layers,
        n_heads=tiny.num_attention_heads, n_kv_heads=tiny.num_key_value_heads, head_dim=tiny.head_dim,
        ffn_hidden_dim=tiny.intermediate_size, max_seq_len=tiny.max_position_embeddings,
        rope_theta=tiny.rope_theta, rope_scaling=None, norm_eps=1e-6, tie_word_embeddings=True,
    )
    assert read_hf_shape(tiny_model_path, max_seq_len=256).max_seq_len == 256


def test_read_hf_shape_reads_llama3_rope_scaling(tmp_path: Path) -> None:
    config = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
              "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                               "original_max_position_embeddings": 8192},
              "rope_theta": 500000.0, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = read_hf_shape(tmp_path)
    assert shape.rope_theta == 500000.0
    assert shape.rope_scaling == {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"use_sliding_window": True}, "sliding-window"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope_type='yarn'"),
    ],
)
def test_read_hf_shape_rejects_what_the_decoder_cannot_express(
    tiny_model_path: str, tmp_path: Path, change: dict, message: str
) -> None:
    config = json.loads((Path(tiny_model_path) / "config.json").read_text())
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        read_hf_shape(tmp_path)


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_hf_shape(tmp_path)


# --- LearnerConfig --------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine() -> None:
    config = LearnerConfig(model="tiny", warmup_steps=4, lr_schedule="cosine", total_steps=12,
                           min_lr_ratio=0.1)
    factors = [config.lr_factor(k) for k in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert factors[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert factors[12] == pytest.approx(0.1) and factors[13] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert LearnerConfig(model="tiny").lr_factor(100) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_schedule": "cosine"}, "total_steps"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"device": "tpu"}, "device"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_learner_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnerConfig(model="tiny", **kwargs)


# --- training -------------------------------------------------------------------------------


def test_train_step_moves_logprobs_in_the_advantages_direction(tiny_model_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3, device="cpu"))
    assert learner.device.type == "cpu" and learner.compute_dtype == torch.float32
    seqs = sequences()
    before = learner.logprobs(seqs)
    # Behaviour logprobs from the learner itself: every ratio is 1 (on-policy).
    trajs = trajectories(seqs, before)
    metrics = learner.train_step(trajs, advantages(trajs))

    assert learner.step == 1 and learner.version == 1
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["loss/clipfrac_low"] == metrics["loss/clipfrac_high"] == 0.0
    assert metrics["loss/tokens"] == sum(n - PROMPT_LEN for n in LENGTHS)
    assert metrics["learner/sequences"] == 4 and metrics["learner/micro_batches"] == 1
    assert metrics["learner/lr"] == 1e-3 and metrics["learner/skipped"] == 0.0
    assert torch.isfinite(torch.tensor([metrics["loss/total"], metrics["learner/grad_norm"]])).all()
    assert metrics["learner/grad_norm"] > 0

    after = learner.logprobs(seqs)
    for i, traj in enumerate(trajs):
        sampled = torch.tensor(traj.loss_mask).bool()
        change = float((after[i] - before[i])[sampled].mean())
        assert change > 0 if ADVANTAGES[i] > 0 else change < 0, (i, change)
        # The prompt tokens are not trained on, but they change too (shared weights):
        # nothing to assert there beyond finiteness.
        assert torch.isfinite(after[i]).all()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_gradient_accumulation_equals_one_big_batch(tiny_model_path: str, aggregation: Any) -> None:
    trajs = trajectories(sequences())
    adv = advantages(trajs, (1.0, -1.0, 0.5, -0.5))
    results = []
    for micro_batch_size in (None, 1):
        learner = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3, micro_batch_size=micro_batch_size,
                                        loss=LossConfig(aggregation=aggregation)))
        metrics = learner.train_step(trajs, adv)
        grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
        results.append((metrics, grads, params(learner)))
    (m_one, g_one, p_one), (m_acc, g_acc, p_acc) = results
    assert (m_one["learner/micro_batches"], m_acc["learner/micro_batches"]) == (1, 4)
    assert m_acc["loss/total"] == pytest.approx(m_one["loss/total"], rel=1e-5)
    assert m_acc["learner/grad_norm"] == pytest.approx(m_one["learner/grad_norm"], rel=1e-5)
    # Gradients (after clipping) match: the normaliser is the whole step's, not a micro-batch's.
    # (Adam's update is nearly scale-free, so the parameters alone would not show a wrong one.)
    for name, grad in g_one.items():
        torch.testing.assert_close(g_acc[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    for name, value in p_one.items():
        torch.testing.assert_close(p_acc[name], value, rtol=0, atol=5e-5, msg=name)


def test_micro_batch_tokens_limits_padded_tokens(tiny_model_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_model_path, micro_batch_tokens=40, layout="padded"))
    trajs = trajectories(sequences())
    metrics = learner.train_step(trajs, advantages(trajs))
    # In order: [12, 20] pads to 2 x 20 = 40; [7, 16] to 2 x 16 = 32.
    assert metrics["learner/micro_batches"] == 2
    assert metrics["learner/padded_tokens"] == 40 + 32


def test_micro_batch_tokens_limits_packed_tokens(tiny_model_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_model_path, micro_batch_tokens=30))
    trajs = trajectories(sequences())
    metrics = learner.train_step(trajs, advantages(trajs))
    # Packed inputs stop before each last (loss) token: 11, 19, 6, 15 tokens, no shared
    # prefixes, no padding. In token order (first ids 14, 660, 731, 990: 15, 6, 11, 19
    # tokens) at most 30 tree nodes per micro-batch: [15 + 6] and [11 + 19].
    assert metrics["learner/padded_tokens"] == 11 + 19 + 6 + 15
    assert metrics["learner/micro_batches"] == 2


def test_loss_normalizer_scales_the_gradient(tiny_model_path: str) -> None:
    # The same batch twice: token_mean's loss (and gradient) stays the same, since the
    # normaliser doubles with the numerator.
    trajs = trajectories(sequences())
    adv = advantages(trajs)
    norms = []
    for copies in (1, 2):
        learner = Learner(LearnerConfig(model=tiny_model_path, micro_batch_size=2, max_grad_norm=None,
                                        loss=LossConfig(kind="dapo")))
        metrics = learner.train_step(trajs * copies, adv * copies)
        norms.append((metrics["loss/total"], metrics["learner/grad_norm"]))
    assert norms[1][0] == pytest.approx(norms[0][0], rel=1e-5)
    assert norms[1][1] == pytest.approx(norms[0][1], rel=1e-4)


def test_kl_to_a_reference_learner(tiny_model_path: str) -> None:
    config = LearnerConfig(model=tiny_model_path, lr=1e-3, loss=LossConfig(kl_coef=0.1))
    learner, reference = Learner(config), Learner(config)
    seqs = sequences()
    trajs = trajectories(seqs, learner.logprobs(seqs))
    with pytest.raises(ValueError, match="ref_logprobs"):
        learner.train_step(trajs, advantages(trajs))
    first = learner.train_step(trajs, advantages(trajs), ref_logprobs=reference.logprobs(seqs))
    assert first["loss/kl_ref"] == pytest.approx(0.0, abs=1e-6)  # identical weights
    second = learner.train_step(trajs, advantages(trajs), ref_logprobs=reference.logprobs(seqs))
    assert second["loss/kl_ref"] > 0


def test_state_dict_round_trip_gives_the_same_next_step(tiny_model_path: str) -> None:
    config = LearnerConfig(model=tiny_model_path, lr=1e-3, warmup_steps=3, micro_batch_size=2)
    first = Learner(config)
    trajs = trajectories(sequences(0))
    first.train_step(trajs, advantages(trajs))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)

    second = Learner(config)
    second.load_state_dict(torch.load(buffer, weights_only=False))
    assert (second.step, second.version, second.lr) == (first.step, first.version, first.lr)
    assert (second.step, second.version, second.lr) == (1, 1, pytest.approx(1e-3 * 2 / 3))
    p1, p2 = params(first), params(second)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)

    nxt = trajectories(sequences(7))
    m1 = first.train_step(nxt, advantages(nxt))
    m2 = second.train_step(nxt, advantages(nxt))
    timing = ("learner/step_seconds", "learner/tokens_per_second")
    assert {k: v for k, v in m1.items() if k not in timing} == {
        k: v for k, v in m2.items() if k not in timing
    }
    p1, p2 = params(first), params(second)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    # Tying survives the reload: still one parameter.
    model: Any = second.model
    assert model.tok_embeddings.weight is model.lm_head.weight


def test_train_step_rejects_misaligned_input(tiny_model_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_model_path))
    trajs = trajectories(sequences())
    adv = advantages(trajs)
    with pytest.raises(ValueError, match="advantage rows"):
        learner.train_step(trajs, adv[:2])
    bad = trajectories(sequences())
    bad[0].loss_mask[0] = 1
    with pytest.raises(ValueError, match="first token has no context"):
        learner.train_step(bad, adv)
    bad = trajectories(sequences())
    bad[1].logprobs.pop()
    with pytest.raises(ValueError, match="align one to one"):
        learner.train_step(bad, adv)
    bad = trajectories(sequences())
    bad[2].token_ids[3] = 10**6
    with pytest.raises(ValueError, match="outside the vocabulary"):
        learner.train_step(bad, adv)
    assert learner.step == 0 and learner.version == 0


def test_scalar_advantages_broadcast_to_loss_tokens(tiny_model_path: str) -> None:
    trajs = trajectories(sequences())
    per_token = Learner(LearnerConfig(model=tiny_model_path)).train_step(trajs, advantages(trajs))
    scalar = Learner(LearnerConfig(model=tiny_model_path)).train_step(trajs, list(ADVANTAGES))
    assert scalar["loss/total"] == pytest.approx(per_token["loss/total"], rel=1e-6)
    assert scalar["learner/grad_norm"] == pytest.approx(per_token["learner/grad_norm"], rel=1e-5)
