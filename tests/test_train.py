"""fit(): schedule, parameter groups, determinism, exact resume, the NaN guard, argument checks."""

import json
import math
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlmlab.train import History, TrainingDiverged, fit, lr_at, make_optimizer, to_device
from vlmlab.zoo import CheckpointError, sha256_file

STEPS = 20


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A 2-layer MLP with dropout (so the RNG state matters) and a LayerNorm (a 1-D weight)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                               torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))


def batches(step: int) -> dict:
    """Nested batch: x = sum of inputs, a pure function of the step."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 4, generator=g)
    return {"inputs": (x,), "target": {"y": x.sum(1, keepdim=True)}}


def loss_fn(model, batch):
    pred = model(batch["inputs"][0])
    return F.mse_loss(pred, batch["target"]["y"]), {"mean_pred": pred.mean()}


def run(model=None, **kw) -> tuple[torch.nn.Module, History]:
    model = model if model is not None else tiny_model()
    kw = {"steps": STEPS, "lr": 1e-2, "progress": False, "device": "cpu", "loss_fn": loss_fn, "batches": batches} | kw
    return model, fit(model, **kw)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lr_schedule_known_values():
    # steps=11, 2 warmup steps: 0.5, 1.0, then cosine over steps 2..10 down to 0.1
    assert lr_at(0, 11, 1.0, 2, 0.1) == pytest.approx(0.5)
    assert lr_at(1, 11, 1.0, 2, 0.1) == pytest.approx(1.0)
    assert lr_at(2, 11, 1.0, 2, 0.1) == pytest.approx(1.0)
    assert lr_at(6, 11, 1.0, 2, 0.1) == pytest.approx(0.55)
    assert lr_at(10, 11, 1.0, 2, 0.1) == pytest.approx(0.1)
    assert lr_at(0, 1, 3e-4, 0, 0.1) == pytest.approx(3e-4)  # a single step, no warmup: the peak


def test_fit_follows_the_schedule_and_learns():
    _, h = run(steps=60, warmup=0.1, lr=2e-2, min_lr_ratio=0.1)
    assert h.steps == list(range(60))
    assert h.lr == pytest.approx([lr_at(s, 60, 2e-2, 6, 0.1) for s in range(60)])
    assert max(h.lr) == pytest.approx(2e-2) and h.lr[-1] == pytest.approx(2e-3)
    assert sum(h.loss[-10:]) < 0.3 * sum(h.loss[:10])
    assert len(h.logs) == 60 and set(h.logs[0]) == {"mean_pred"}
    assert all(math.isfinite(g) and g > 0 for g in h.grad_norm)
    d = h.as_dict()
    assert d["mean_pred"] == [row["mean_pred"] for row in h.logs] and d["loss"] == h.loss
    assert History.from_dict(json.loads(json.dumps(d))) == h


def test_weight_decay_groups_skip_1d_and_frozen_params():
    model = tiny_model()
    model[0].bias.requires_grad_(False)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[4].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[3].weight), id(model[3].bias), id(model[4].bias)}


class TwoLayers(torch.nn.Module):
    """Two identical linear layers, summed: both get the same gradient, so only their rates can tell them apart."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.new = torch.nn.Linear(4, 1)
        self.trained = torch.nn.Linear(4, 1)
        self.trained.load_state_dict(self.new.state_dict())

    def forward(self, x):
        return self.new(x) + self.trained(x)


def test_lr_scales_step_a_submodule_at_its_multiple_of_the_rate():
    model = TwoLayers()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    _, h = run(model, steps=1, lr=1e-2, warmup=0, weight_decay=0.0, lr_scales={"trained": 0.25})
    moved = {k: (v - start[k]).abs() for k, v in model.state_dict().items()}
    # Adam's first step moves every parameter by ~lr, whatever its gradient: 1e-2 for `new`, 2.5e-3 for `trained`
    assert torch.allclose(moved["new.weight"], torch.full_like(moved["new.weight"], 1e-2), rtol=1e-3)
    assert torch.allclose(moved["trained.weight"], 0.25 * moved["new.weight"], rtol=1e-3)
    assert h.lr == [1e-2]  # the schedule's rate; the factor is the group's
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, lr_scales={"trained": 0.25})
    groups = [(g["weight_decay"], g["lr_scale"], len(g["params"])) for g in opt.param_groups]
    assert groups == [(0.1, 1.0, 1), (0.1, 0.25, 1), (0.0, 1.0, 1), (0.0, 0.25, 1)]


def test_lr_scales_must_name_submodules_and_resume_only_with_the_same_scales(tmp_path):
    with pytest.raises(ValueError, match=r"fit\(\): lr_scales=\{'lm': 0.5\} is not allowed; expected names of the "):
        run(TwoLayers(), lr_scales={"lm": 0.5})
    with pytest.raises(ValueError, match=r"lr_scales=\{'new': 0\} is not allowed; expected None or"):
        run(TwoLayers(), lr_scales={"new": 0})
    run(TwoLayers(), steps=2, ckpt_dir=tmp_path, lr_scales={"trained": 0.25})
    with pytest.raises(CheckpointError, match="was trained with lr_scales=\\{'trained': 0.25\\}, not None"):
        run(TwoLayers(), steps=4, ckpt_dir=tmp_path)


def test_clipping_bounds_the_update_direction():
    # with clip, the logged norm is the norm before clipping; with a tiny clip the weights barely move
    model, h = run(steps=3, clip=1e-6, lr=1e-3, warmup=0, weight_decay=0.0)
    moved = (model[4].weight - tiny_model()[4].weight).abs().max().item()
    assert h.grad_norm[0] > 1e-3 and moved < 4e-3  # Adam normalises, so the bound is ~ lr * steps


def test_same_seed_same_weights_other_seed_other_weights():
    a, ha = run(seed=3)
    b, hb = run(seed=3)
    c, _ = run(seed=4)
    assert weights_equal(a, b) and ha.loss == hb.loss
    assert not weights_equal(a, c)  # dropout masks differ


def test_interrupted_run_resumes_to_exactly_the_same_weights(tmp_path):
    full, h_full = run(eval_fn=lambda m: {"w0": m[0].weight.sum()}, eval_every=4)

    def interrupted(step):
        if step == 13:
            raise KeyboardInterrupt
        return batches(step)

    ckpt = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(batches=interrupted, ckpt_dir=ckpt, ckpt_every=5, eval_fn=lambda m: {"w0": m[0].weight.sum()}, eval_every=4)
    assert json.loads((ckpt / "train_state.json").read_text())["step"] == 10
    seen = []

    def resumed_batches(step):
        seen.append(step)
        return batches(step)

    resumed, h = run(tiny_model(seed=99), batches=resumed_batches, ckpt_dir=ckpt, ckpt_every=5,
                     eval_fn=lambda m: {"w0": m[0].weight.sum()}, eval_every=4)
    assert seen == list(range(10, STEPS))
    assert weights_equal(resumed, full)
    assert h.steps == h_full.steps and h.loss == h_full.loss and h.lr == h_full.lr and h.logs == h_full.logs
    assert h.evals == h_full.evals and [s for s, _ in h.evals] == [3, 7, 11, 15, 19]
    assert h.wall_s > 0


def test_resume_past_the_end_returns_at_once(tmp_path):
    trained, h = run(ckpt_dir=tmp_path)  # no ckpt_every: saved once, at the end

    def never(step):
        raise AssertionError("no batch should be drawn")

    again, h2 = run(tiny_model(seed=5), batches=never, ckpt_dir=tmp_path)
    assert weights_equal(again, trained) and h2 == h
    with pytest.warns(UserWarning, match="past steps=10"):
        _, h3 = run(tiny_model(seed=5), batches=never, ckpt_dir=tmp_path, steps=10)
    assert h3.steps == list(range(STEPS))
    fresh, _ = run(tiny_model(seed=5), ckpt_dir=tmp_path, resume=False, steps=2)
    assert not weights_equal(fresh, trained)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poisoned(model, batch):
        loss, logs = loss_fn(model, batch)
        return (loss * math.nan if batch["target"]["y"].equal(batches(7)["target"]["y"]) else loss), logs

    with pytest.raises(TrainingDiverged) as err:
        run(loss_fn=poisoned, ckpt_dir=tmp_path, ckpt_every=5)
    message = str(err.value)
    assert "step 7" in message and "nan" in message and "train_state.safetensors (step 5)" in message
    assert "lower lr" in message and isinstance(err.value, FloatingPointError)
    assert err.value.step == 7 and err.value.checkpoint == tmp_path / "train_state.safetensors"

    record = json.loads((tmp_path / "train_state.json").read_text())
    assert record["step"] == 5 and record["history"]["steps"] == list(range(5))
    assert record["sha256"] == sha256_file(tmp_path / "train_state.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in load_file(tmp_path / "train_state.safetensors").values())
    # the checkpoint loads and carries on: with a sane loss_fn it reaches the uninterrupted run exactly
    full, h_full = run()
    from_disk, h = run(tiny_model(seed=1), ckpt_dir=tmp_path)
    assert weights_equal(from_disk, full) and h.loss == h_full.loss


def test_nan_without_checkpoint_says_so():
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        run(loss_fn=lambda m, b: loss_fn(m, b)[0] * math.inf)


def test_corrupted_train_state_is_refused(tmp_path):
    run(steps=2, ckpt_dir=tmp_path)
    path = tmp_path / "train_state.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        run(steps=4, ckpt_dir=tmp_path)


def test_resuming_into_another_model_is_refused(tmp_path):
    run(steps=2, ckpt_dir=tmp_path)
    with pytest.raises(CheckpointError, match="(?s)holds another model.*resume=False"):
        run(torch.nn.Linear(4, 1), steps=4, ckpt_dir=tmp_path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(precision):
    _, h = run(steps=5, precision=precision)
    assert all(math.isfinite(x) for x in h.loss)


def test_eval_runs_in_eval_mode_without_grad_and_at_the_end():
    modes = []

    def eval_fn(model):
        modes.append((model.training, torch.is_grad_enabled()))
        return {"loss": loss_fn(model, batches(0))[0]}

    model, h = run(steps=7, eval_fn=eval_fn, eval_every=3)
    assert [s for s, _ in h.evals] == [2, 5, 6] and modes == [(False, False)] * 3
    assert model.training and h.last_eval == h.evals[-1][1] and isinstance(h.last_eval["loss"], float)


def test_to_device_walks_nested_containers():
    Pair = namedtuple("Pair", "a b")
    batch = {"x": [torch.ones(1), (torch.zeros(1), "text")], "p": Pair(torch.ones(2), 3)}
    moved = to_device(batch, "meta")
    assert moved["x"][0].device.type == "meta" and moved["x"][1][0].device.type == "meta"
    assert moved["x"][1][1] == "text" and isinstance(moved["p"], Pair) and moved["p"].b == 3


@pytest.mark.parametrize("kw, name", [
    ({"steps": 0}, "steps=0"), ({"steps": 2.5}, "steps=2.5"), ({"lr": 0}, "lr=0"), ({"lr": math.nan}, "lr=nan"),
    ({"precision": "fp8"}, "precision='fp8'"), ({"warmup": 30}, "warmup=30"), ({"warmup": -0.1}, "warmup=-0.1"),
    ({"min_lr_ratio": 2}, "min_lr_ratio=2"), ({"clip": -1}, "clip=-1"), ({"ckpt_every": 5}, "ckpt_every=5"),
    ({"eval_every": 5}, "eval_every=5"), ({"log_every": 0}, "log_every=0"), ({"weight_decay": -1}, "weight_decay=-1"),
])
def test_bad_arguments_name_the_parameter_value_and_what_is_allowed(kw, name):
    with pytest.raises(ValueError, match=rf"fit\(\): {name} is not allowed; expected "):
        run(**kw)


def test_loss_fn_must_return_a_scalar():
    with pytest.raises(TypeError, match="scalar tensor"):
        run(loss_fn=lambda m, b: m(b["inputs"][0]))


def test_eval_does_not_change_training_even_if_it_draws_random_numbers():
    plain, _ = run()
    with_eval, h = run(eval_fn=lambda m: {"noise": torch.rand(1)}, eval_every=2)
    assert weights_equal(plain, with_eval) and len(h.evals) == STEPS // 2


def test_fit_trains_a_captioner_with_the_generic_caption_loss(tok):
    """Any Captioner trains with `protocols.caption_loss` on canonical batches (image_features, input_ids,
    attention_mask, labels), and a frozen vision part stays untouched and in eval mode."""
    from vlmlab.data.loaders import encode_texts, indexed_collate
    from vlmlab.frozen import checksum, freeze
    from vlmlab.protocols import caption_loss
    from vlmlab.strategies.prefix_lm import Config, PrefixLM

    torch.manual_seed(0)
    vision = freeze(torch.nn.Linear(2, 2))  # stands in for a frozen tower: never called with features given
    model = PrefixLM(Config(vocab_size=len(tok), vision_dim=6, n_image_tokens=4, text_len=12, dim=32, depth=1,
                            n_heads=2), vision=vision)
    features = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(0))
    text = encode_texts(tok, ["", "", "a", "two"] * 2, ["a red star", "a blue circle", " large", " yes"] * 2, max_length=12)
    collate = indexed_collate(features, text, key="image_features")
    before = checksum(vision)
    _, h = run(model, loss_fn=caption_loss, batches=lambda step: collate(list(range(8))), steps=30, lr=1e-2, warmup=0.0)
    assert h.loss[-1] < 0.5 * h.loss[0], (h.loss[0], h.loss[-1])
    assert checksum(vision) == before and not vision.training and model.training
