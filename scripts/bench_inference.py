"""Forward without gradient (eval.py, predict.py) of one non-local block on CPU, on each computation path.

``select_path`` sends a block that needs no gradient to ``"sdpa"`` rather than ``"cpu_chunked"``
(nlvideo/models/nonlocal_block.py); this measures what that costs or saves. Each path is forced
through ``select_path`` (as tests/test_nonlocal_pool.py does); the paths take turns, round after
round, and the fastest of the rounds is reported, which keeps other load on the machine out of the
comparison. ``peaked`` rows scale theta/phi up so that the softmax is peaked and leaves subnormal
weights, as a trained block's does (the case that makes PyTorch's CPU attention kernel slow in
training, docs/models.md); the fraction of such weights is shown.

    python scripts/bench_inference.py                 # 8x224² clips: res3 and res4 blocks, batch 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nlvideo.models import NonLocalBlock  # noqa: E402
from nlvideo.models import nonlocal_block as nl  # noqa: E402

SHAPES = {"res3": (512, 4, 28), "res4": (1024, 4, 14)}  # (C, T, H=W) of 8x224² clips
SETTINGS = {"fresh": 0.01, "peaked": 0.05}  # std of theta/phi's weights (0.01: the block's init)


def subnormal_fraction(block: NonLocalBlock, x: torch.Tensor) -> float:
    """Share of the attention weights that are subnormal floats (the naive path's map)."""
    _, attention = block(x, return_nl_map=True)
    tiny = torch.finfo(attention.dtype).tiny
    return float(((attention > 0) & (attention < tiny)).float().mean())


def time_paths(block: NonLocalBlock, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Fastest of ``rounds`` forward passes per path, the paths interleaved."""
    best = dict.fromkeys(nl.PATHS, float("inf"))
    select = nl.select_path
    try:
        for _ in range(rounds):
            for path in nl.PATHS:
                nl.select_path = lambda *a, path=path, **k: nl.PathChoice(path, "forced by the benchmark")
                start = time.perf_counter()
                block(x)
                best[path] = min(best[path], time.perf_counter() - start)
    finally:
        nl.select_path = select
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} threads, batch {args.batch}, fastest of {args.rounds} rounds, inference_mode")
    print("| block | instantiation | weights | subnormal weights | naive | sdpa | cpu_chunked |")
    print("|---|---|---|---|---|---|---|")
    for (stage, (c, t, hw)), inst, (setting, std) in (
        (s, i, w) for s in SHAPES.items() for i in ("embedded_gaussian", "gaussian") for w in SETTINGS.items()
    ):
        if inst == "gaussian" and setting == "peaked":
            continue  # no theta/phi weights: the gaussian form is as peaked as its input makes it
        torch.manual_seed(0)
        block = NonLocalBlock(c, instantiation=inst).eval()
        for m in (block.theta, block.phi):
            for p in m.parameters():
                p.data.normal_(0, std)
        torch.nn.init.normal_(block.W[1].weight, std=0.1)  # a live W_z: the fresh block's BN scale is 0
        x = torch.randn(args.batch, c, t, hw, hw)
        with torch.inference_mode():
            times = time_paths(block, x, args.rounds)
            sub = subnormal_fraction(block, x)
        weights = setting if inst != "gaussian" else "x_i^T x_j"
        print(f"| {stage} {c}x{t}x{hw}² | {inst} | {weights} | {100 * sub:.1f} % | "
              + " | ".join(f"{1000 * times[p]:.0f} ms" for p in nl.PATHS) + " |", flush=True)


if __name__ == "__main__":
    main()
