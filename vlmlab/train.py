"""The one training loop every notebook uses. Introduced in notebook 01.

`fit()` is plain PyTorch: AdamW (no weight decay on 1-D parameters; a submodule may step at its own
multiple of the rate), linear warmup then cosine decay, gradient clipping, mixed precision, a progress
bar, periodic evaluation, checkpoints with exact resume, and a guard that stops on nan/inf. Data comes
from `batches(step)`, a function of the step index, so a resumed run sees exactly the batches an
uninterrupted run would; together with the saved RNG state this makes "interrupt, resume" give the
same weights, bit for bit.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .files import write_json_atomic
from .params import is_int, is_number, require
from .zoo import CheckpointError, check_sha256, sha256_file, write_safetensors_atomic

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STATE_NAME = "train_state"


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became nan/inf. The checkpoint on disk is the last good one."""

    def __init__(self, message: str, step: int, value: float, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.value, self.checkpoint = step, value, checkpoint


@dataclass
class History:
    """What fit() measured. `steps[i]` is the 0-based step index; evals are (step, {metric: value})
    taken after that step."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    logs: list[dict[str, float]] = field(default_factory=list)  # the extra values loss_fn returned, per step
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def last_eval(self) -> dict[str, float]:
        return self.evals[-1][1] if self.evals else {}

    def as_dict(self) -> dict:
        """The fields, plus one list per logged name (aligned with `steps`) for plotting."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["evals"] = [[step, metrics] for step, metrics in self.evals]
        for key in sorted({k for row in self.logs for k in row}):
            d.setdefault(key, [row.get(key, math.nan) for row in self.logs])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{f.name: d[f.name] for f in fields(cls)} | {"evals": [(s, m) for s, m in d["evals"]]})


def lr_at(step: int, steps: int, lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine down to `min_lr_ratio * lr` at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - 1 - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                   lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: matrices decay, 1-D ones (biases, norm weights) do not. `lr_scales`
    ({submodule name: factor}) gives a submodule's parameters `factor` times the rate, in groups of their own that
    carry it as "lr_scale" (the most specific name wins). Without it: two groups, decay and no decay."""
    scales = lr_scales or {}

    def scale_of(name: str) -> float:
        owners = [k for k in scales if name.startswith(k + ".")]
        return scales[max(owners, key=len)] if owners else 1.0

    scaled = [(p, scale_of(n)) for n, p in model.named_parameters() if p.requires_grad]
    factors = sorted({1.0} | {f for _, f in scaled}, reverse=True)
    return torch.optim.AdamW([{"params": [p for p, f in scaled if (p.ndim >= 2) == decays and f == factor],
                               "weight_decay": weight_decay if decays else 0.0, "lr_scale": factor}
                              for decays in (True, False) for factor in factors], lr=lr)


def to_device(batch, device: torch.device | str):
    """Move every tensor inside nested dicts, lists, tuples, namedtuples and dataclasses to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(batch, **{f.name: to_device(getattr(batch, f.name), device) for f in fields(batch)})
    return batch


def _validate(model, loss_fn, batches, steps, lr, weight_decay, lr_scales, warmup, min_lr_ratio, clip, precision,
              eval_fn, eval_every, ckpt_dir, ckpt_every, log_every) -> None:
    checks = [
        (isinstance(model, torch.nn.Module), "model", model, "a torch.nn.Module"),
        (callable(loss_fn), "loss_fn", loss_fn, "a function (model, batch) -> loss or (loss, {name: float})"),
        (callable(batches), "batches", batches, "a function step -> batch"),
        (is_int(steps) and steps >= 1, "steps", steps, "an integer >= 1"),
        (is_number(lr) and lr > 0, "lr", lr, "a number > 0"),
        (is_number(weight_decay) and weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0"),
        (lr_scales is None or isinstance(lr_scales, dict) and all(is_number(v) and v > 0 for v in lr_scales.values()),
         "lr_scales", lr_scales, "None or {submodule name: a factor > 0}"),
        (is_number(warmup) and (0 <= warmup < 1 or (warmup == int(warmup) and warmup <= steps)), "warmup", warmup,
         f"a fraction of the steps in [0, 1) or a whole number of steps <= steps={steps}"),
        (is_number(min_lr_ratio) and 0 <= min_lr_ratio <= 1, "min_lr_ratio", min_lr_ratio, "a number in [0, 1]"),
        (is_number(clip) and clip >= 0, "clip", clip, "a gradient norm > 0, or 0 for no clipping"),
        (precision in PRECISIONS, "precision", precision, f"one of {PRECISIONS}"),
        (is_int(eval_every) and eval_every >= 0, "eval_every", eval_every, "an integer >= 0 (0: only at the end)"),
        (eval_every == 0 or eval_fn is not None, "eval_every", eval_every, "0 when there is no eval_fn"),
        (is_int(ckpt_every) and ckpt_every >= 0, "ckpt_every", ckpt_every, "an integer >= 0 (0: only at the end)"),
        (ckpt_every == 0 or ckpt_dir is not None, "ckpt_every", ckpt_every, "0 when there is no ckpt_dir"),
        (is_int(log_every) and log_every >= 1, "log_every", log_every, "an integer >= 1"),
    ]
    for check in checks:
        require(*check, where="fit()")
    unknown = sorted(set(lr_scales or {}) - {name for name, _ in model.named_modules() if name})
    require(not unknown, "lr_scales", lr_scales, f"names of the model's submodules; {unknown} is not one", where="fit()")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("fit(): the model has no parameter with requires_grad=True, so there is nothing to train")


def _resolve_precision(precision: str, device: torch.device) -> str:
    bf16_ok = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    if precision == "auto":
        return "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    if precision == "bf16" and not bf16_ok:
        raise ValueError(f"fit(): precision='bf16' is not supported on {device}; use 'fp16' or 'fp32'")
    return precision


def _save_state(path: Path, model, optimizer, scaler, step: int, history: History, config: dict, device) -> None:
    """Model + AdamW state + RNG state as safetensors; step, config, scaler and history as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        tensors |= {f"optim.{i}.{k}": v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in state.items()}
    tensors["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    write_safetensors_atomic(tensors, path, metadata={"step": str(step)})
    record = {"format": 1, "step": step, "sha256": sha256_file(path), "config": config,
              "scaler": scaler.state_dict(), "history": history.as_dict()}
    write_json_atomic(path.with_suffix(".json"), record)


def _load_state(path: Path, model, optimizer, scaler, config: dict, device) -> tuple[int, History]:
    """Restore what _save_state wrote; returns (steps done, history so far)."""
    json_path = path.with_suffix(".json")
    if not json_path.exists():
        raise CheckpointError(f"{path} has no {json_path.name} beside it; delete {path.parent} to start over")
    record = json.loads(json_path.read_text())
    check_sha256(path, record["sha256"])
    changed = {k: (record["config"].get(k), v) for k, v in config.items() if k != "steps" and record["config"].get(k) != v}
    if "lr_scales" in changed:  # the optimizer's groups differ, so its saved state would land on other parameters
        raise CheckpointError(f"{path} was trained with lr_scales={changed['lr_scales'][0]!r}, not {config['lr_scales']!r}; "
                              "pass the same lr_scales, another ckpt_dir, or resume=False")
    if changed:
        warnings.warn(f"resuming {path} with different settings (saved, now): {changed}", stacklevel=3)
    tensors = load_file(path)
    try:
        model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds another model ({e}); use another ckpt_dir or pass resume=False") from e
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(optimizer.state_dict() | {"state": state})
    if scaler.is_enabled() and record["scaler"]:
        scaler.load_state_dict(record["scaler"])
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return record["step"], History.from_dict(record["history"])


def fit(model: torch.nn.Module, loss_fn: Callable, batches: Callable[[int], object], *, steps: int, lr: float = 1e-3,
        weight_decay: float = 0.01, lr_scales: dict[str, float] | None = None, warmup: float = 0.05,
        min_lr_ratio: float = 0.1, clip: float = 1.0, precision: str = "auto", device: torch.device | str | None = None,
        eval_fn: Callable | None = None, eval_every: int = 0, ckpt_dir: str | Path | None = None, ckpt_every: int = 0,
        resume: bool = True, seed: int = 0, progress: bool = True, log_every: int = 10) -> History:
    """Train `model` for `steps` steps of `loss_fn(model, batches(step))` and return the History.

    lr_scales: {submodule name: factor}, that submodule's rate as a multiple of the schedule's (notebook 03: a text
    side started from a trained LM moves slower than the new image side). warmup: a fraction of `steps` when < 1,
    else a number of steps. clip: max gradient norm (0: off).
    precision: 'auto' (bf16 autocast on a CUDA GPU that has it, else fp32), 'fp32', 'bf16', 'fp16'
    (with a GradScaler). eval_fn(model) -> {metric: float} runs every `eval_every` steps and at the
    end, in eval mode without gradients. With `ckpt_dir`, the full training state is saved there
    every `ckpt_every` steps and at the end, and `resume=True` continues from it.
    The model is put in train mode; a model that keeps a frozen part in eval mode should override `train()`.
    """
    _validate(model, loss_fn, batches, steps, lr, weight_decay, lr_scales, warmup, min_lr_ratio, clip, precision,
              eval_fn, eval_every, ckpt_dir, ckpt_every, log_every)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = _resolve_precision(precision, device)
    warmup_steps = round(warmup * steps) if warmup < 1 else int(warmup)
    config = {"steps": steps, "lr": lr, "weight_decay": weight_decay, "lr_scales": lr_scales, "warmup": warmup,
              "min_lr_ratio": min_lr_ratio, "clip": clip, "precision": precision, "seed": seed}

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, lr, weight_decay, lr_scales)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    torch.manual_seed(seed)
    history, start, last_good = History(), 0, None
    state_path = Path(ckpt_dir) / f"{STATE_NAME}.safetensors" if ckpt_dir is not None else None
    if resume and state_path is not None and state_path.exists():
        start, history = _load_state(state_path, model, optimizer, scaler, config, device)
        last_good = (state_path, start)
        if start > steps:
            warnings.warn(f"{state_path} is at step {start}, past steps={steps}; returning it as it is", stacklevel=2)
        if start >= steps:
            return history

    t0 = time.perf_counter() - history.wall_s
    with tqdm(total=steps, initial=start, disable=not progress, desc="fit") as bar:
        for step in range(start, steps):
            lr_now = lr_at(step, steps, lr, warmup_steps, min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr_now * group["lr_scale"]
            optimizer.zero_grad(set_to_none=True)
            batch = to_device(batches(step), device)
            with torch.autocast(device.type, dtype=AMP_DTYPES.get(precision), enabled=precision in AMP_DTYPES):
                out = loss_fn(model, batch)
            loss, logs = out if isinstance(out, tuple) else (out, {})
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
                raise TypeError(f"loss_fn must return a scalar tensor or (loss, {{name: float}}); got {type(out).__name__}")
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                _diverged(step, "loss", loss_value, last_good, lr_now)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip or math.inf).item()
            if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16: the scaler skips the step itself
                _diverged(step, "gradient norm", grad_norm, last_good, lr_now)
            scaler.step(optimizer)
            scaler.update()

            history.steps.append(step)
            history.loss.append(loss_value)
            history.lr.append(lr_now)
            history.grad_norm.append(grad_norm)
            history.logs.append(_floats(logs))
            done = step + 1
            if eval_fn is not None and (eval_every and done % eval_every == 0 or done == steps):
                history.evals.append((step, _evaluate(model, eval_fn, device)))
            history.wall_s = time.perf_counter() - t0
            if state_path is not None and (ckpt_every and done % ckpt_every == 0 or done == steps):
                _save_state(state_path, model, optimizer, scaler, done, history, config, device)
                last_good = (state_path, done)
            bar.update(1)
            if done % log_every == 0 or done == steps:
                recent = history.loss[-log_every:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_now:.2e}")
    return history


def _evaluate(model, eval_fn: Callable, device: torch.device) -> dict[str, float]:
    """eval_fn(model) in eval mode, without gradients, on a forked RNG so it cannot change training."""
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            metrics = eval_fn(model)
    finally:
        model.train()
    return _floats(metrics)


def _floats(values: dict) -> dict[str, float]:
    """{name: float} from {name: number or one-element tensor}."""
    return {k: v.item() if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}


def _diverged(step: int, what: str, value: float, last_good: tuple[Path, int] | None, lr: float):
    where = (f"the last good checkpoint is {last_good[0]} (step {last_good[1]}); fit(..., resume=True) continues from it"
             if last_good else "no checkpoint was written (pass ckpt_dir and ckpt_every to keep one)")
    raise TrainingDiverged(f"training diverged at step {step}: {what} is {value}; {where}. "
                           f"Hint: lower lr (now {lr:.2e}), check batches({step}) for nan/inf, or use precision='fp32'",
                           step, value, last_good[0] if last_good else None)
