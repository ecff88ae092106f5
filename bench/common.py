"""Shared by the benchmarks: machine description, paired step timing and writing results (DESIGN.md §7)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return info


def matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """Achieved FLOP/s of an n x n matmul: the yardstick that efficiency ratios divide by."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def block_weights(dim: int, hidden: int) -> int:
    """Weights in one transformer block's matmuls: q, k, v and output projections (4 D^2) and the MLP (2 D hidden)."""
    return 4 * dim * dim + 2 * dim * hidden


def step_fn(model: torch.nn.Module, loss_fn):
    """One training step as a function: zero_grad + loss_fn() + backward + AdamW step -> the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def seconds(step) -> float:
    """Wall time of one call, synchronising the GPU around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(a, b, warmup: int, steps: int) -> tuple[float, float, float]:
    """(median step s of a, median step s of b, median of the per-pair ratios a / b).
    Steps run in pairs, alternating which model goes first; a pair's ratio cancels slow drifts of the machine."""
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for i in range(steps):
        if i % 2 == 0:
            times_a.append(seconds(a))
            times_b.append(seconds(b))
        else:
            times_b.append(seconds(b))
            times_a.append(seconds(a))
    ratio = statistics.median(x / y for x, y in zip(times_a, times_b))
    return statistics.median(times_a), statistics.median(times_b), ratio


def write(name: str, result: dict) -> Path:
    """Write bench/results/<name>.json with the machine it ran on."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def first_losses(loss_a, loss_b, tolerance: float | None = None,
                 why: str = "the conversion does not match") -> tuple[float, float]:
    """Two models' losses on their first batch, without gradients: equal when a conversion copied the weights right.
    With `tolerance`, a RuntimeError when they differ by more (`why`: what that means)."""
    with torch.no_grad():
        a, b = loss_a().item(), loss_b().item()
    if tolerance is not None and abs(a - b) > tolerance:
        raise RuntimeError(f"first losses differ: ours {a:.6f}, HF {b:.6f} (allowed: {tolerance}); {why}")
    return a, b


def quick_or_full(doc: str, full_steps: int = 20) -> tuple[bool, int, int]:
    """The command line every benchmark takes: `--quick` (1 warm-up and 4 timed steps, to check that it runs) or the
    full run (3 warm-up steps, `full_steps` timed). Returns (quick, warmup, steps)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 4 timed steps: checks that it runs")
    quick = parser.parse_args().quick
    return (quick, 1, 4) if quick else (quick, 3, full_steps)


def report_against_hf(row: dict, peak: float) -> None:
    """Add the efficiencies (achieved FLOP/s over the matmul's `peak`) to a row of ours-against-Hugging-Face step
    times, and print the row as a table line."""
    row["efficiency_ours"] = round(row["gflops_ours"] * 1e9 / peak, 3)
    row["efficiency_hf"] = round(row["gflops_hf"] * 1e9 / peak, 3)
    print(f"first loss ours {row['first_loss_ours']:.6f}, HF {row['first_loss_hf']:.6f}")
    print(f"{'params':>8} {'GFLOP/step':>10} {'ours s':>8} {'HF s':>8} {'ours/HF':>7} "
          f"{'ours GF/s':>9} {'HF GF/s':>8} {'eff ours':>8} {'eff HF':>7}")
    print(f"{row['params_ours']:>8} {row['train_flops_per_step'] / 1e9:>10.2f} {row['step_s_ours']:>8.4f} "
          f"{row['step_s_hf']:>8.4f} {row['ratio_ours_over_hf']:>7.3f} {row['gflops_ours']:>9.1f} {row['gflops_hf']:>8.1f} "
          f"{row['efficiency_ours']:>8.3f} {row['efficiency_hf']:>7.3f}")
