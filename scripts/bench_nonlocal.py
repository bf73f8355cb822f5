"""Forward+backward of one non-local block: the naive path vs ours (``impl="efficient"``).

By default every configuration runs in its own fresh process (``multiprocessing`` spawn), once per
path, so the peak-memory figure of one run is not polluted by another's: on CPU it is the RSS
high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) minus the RSS after the block, its input and
the output gradient were built, i.e. the peak *activation* memory of the training step (forward, backward,
gradients); on CUDA ``torch.cuda.max_memory_allocated`` minus the allocated memory at the same
point. The child processes run with a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_``) so
that large tensors are returned to the OS when freed and the RSS high-water mark tracks live
tensors, not allocator caching (``--malloc-default`` turns that off). That setting also slows the
steps: every large tensor is a fresh mapping, page-faulted in again, which costs the naive path
(larger tensors) more than ours (an AMD EPYC: res3 of 8x8, contiguous, 0.82x -> 1.01x). Compare
speeds with ``--interleaved``, which keeps the default allocator, as training does.

Shapes (I3D-R50, Kinetics, see ``nlvideo/models/resnet.py``; the inputs of ``i3d_nl5``'s NL blocks,
hooked): 8x224^2 clips (8x8) give res3 = (C=512, T=4, 28, 28) and res4 = (C=1024, 4, 14, 14),
32x224^2 clips (32x2) T=16 at both; the paper's Table 1 (C2D, 32x224^2, no temporal stride in
conv1) has T=8 at res3/res4, listed as "32x224^2 (Table 1: T=8)".

The blocks are built with the same seed and non-zero weights (a fresh block's W is zero), BN in
training mode. max|diff| is max |z_naive - z_ours| over the output of the first step (the column
``max|dx diff|`` is the same for the input gradient); fp32 must be <= 1e-5.

    python scripts/bench_nonlocal.py            # --quick: the key rows, including the target row
    python scripts/bench_nonlocal.py --full     # the whole grid (hours on 2 CPU cores)
    python scripts/bench_nonlocal.py --device cuda --max-batch --full --only "(Table 1: T=8) res3 emb-gauss"
    python scripts/bench_nonlocal.py --device cuda --full --only "T=8) res3 emb-gauss B=8 fp32 sub" \
        "T=8) res3 emb-gauss B=8 bf16 sub"     # several --only texts: the rows matching any of them
    python scripts/bench_nonlocal.py --max-batch --shape 512,8,28 --memory-gib 4   # CPU: a memory budget
    python scripts/bench_nonlocal.py --interleaved --rounds 9            # issue 18: paths in one process
    python scripts/bench_nonlocal.py --model-step i3d_nl5 --frames 8 32 --rounds 5   # whole steps per impl

``--interleaved`` (CPU) times the paths in one process, taking turns step by step (the order alternating
each round), which is what a shared machine allows: a burst of load hits both paths alike. It runs
i3d_nl5's res3/res4 blocks of 8x8 and 32x2 clips (B=2, embedded gaussian, sub-sampled) in both
layouts, fp32 and under bf16 autocast, naive vs ``impl="efficient"``, and names the path
``impl="auto"`` takes there (``nonlocal_block.select_path``). It reports median and fastest step times and the
median of the per-round ratios naive / ours (> 1: ours faster); no memory columns (one process).
``--model-step NAME`` does the same for whole training steps of a model (SGD, cross entropy, as
``scripts/bench_train.py``) built with each ``nonlocal.impl``, channels-last (the trainer's default)
and contiguous.

``--max-batch`` reports the largest batch whose forward + backward fits, for both paths: on CUDA
until ``torch.cuda.OutOfMemoryError`` (each probe in a fresh process, so a failed one leaves
nothing behind), on CPU until the peak activation memory exceeds ``--memory-gib``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # label -> (C, T, H=W)
    "8x224² res3": (512, 4, 28),
    "8x224² res4": (1024, 4, 14),
    "8x224² res5": (2048, 4, 7),
    "32x224² (Table 1: T=8) res3": (512, 8, 28),
    "32x224² (Table 1: T=8) res4": (1024, 8, 14),
    "32x224² res3": (512, 16, 28),
    "32x224² res4": (1024, 16, 14),
}
ABBREV = {
    "gaussian": "gauss", "embedded_gaussian": "emb-gauss", "dot_product": "dot", "concatenation": "concat"
}
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    shape: str
    instantiation: str = "embedded_gaussian"
    batch: int = 2
    dtype: str = "fp32"
    sub_sample: bool = True
    channels_last: bool = False  # the trainer's default layout (trainer.channels_last)
    autocast: bool = False  # an fp32 block under CPU bf16 autocast (--interleaved only)

    @property
    def label(self) -> str:
        ss = "sub" if self.sub_sample else "no-sub"
        cl = " channels-last" if self.channels_last else ""
        dtype = "bf16-autocast" if self.autocast else self.dtype
        return f"{self.shape} {ABBREV[self.instantiation]} B={self.batch} {dtype} {ss}{cl}"

    @property
    def dims(self) -> tuple[int, int, int]:
        """(C, T, H=W) of a named shape, or of a ``--shape C,T,H`` one (labelled "C,T,H")."""
        if self.shape in SHAPES:
            return SHAPES[self.shape]
        c, t, h = (int(v) for v in self.shape.split(","))
        return c, t, h

    def naive_map_bytes(self) -> int:
        """Size of the naive path's largest tensor (the map, or concatenation's (B, 2C', N, M) pairs)."""
        c, t, h = self.dims
        n = t * h * h
        m = t * (h // 2) ** 2 if self.sub_sample else n
        size = 2 if self.dtype == "bf16" else 4
        pairs = c if self.instantiation == "concatenation" else 1  # 2C' = C channels of pairs
        return self.batch * n * m * size * pairs


QUICK = [
    Config("8x224² res3"),  # the target row
    Config("8x224² res3", channels_last=True),
    Config("8x224² res3", sub_sample=False),
    Config("8x224² res3", batch=8),
    Config("8x224² res4"),
    Config("8x224² res4", channels_last=True),
    Config("8x224² res4", batch=8, sub_sample=False),
    Config("32x224² (Table 1: T=8) res3"),
    Config("8x224² res3", instantiation="gaussian"),
    Config("8x224² res3", instantiation="dot_product"),
    Config("8x224² res4", instantiation="concatenation"),
    Config("8x224² res4", dtype="bf16"),
]


def full_grid() -> list[Config]:
    shapes = ["8x224² res3", "8x224² res4", "32x224² (Table 1: T=8) res3", "32x224² (Table 1: T=8) res4"]
    return [
        Config(s, i, b, d, ss, cl)
        for s, i, b, d, ss, cl in itertools.product(
            shapes, ("gaussian", "embedded_gaussian", "dot_product", "concatenation"), (2, 8),
            ("fp32", "bf16"), (True, False), (False, True),
        )
    ]


def build(cfg: Config, impl: str, device: str):  # noqa: ANN201
    import torch

    from nlvideo.models import NonLocalBlock, to_channels_last_3d

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.dtype]
    c, t, h = cfg.dims
    torch.manual_seed(0)
    block = NonLocalBlock(c, instantiation=cfg.instantiation, sub_sample=cfg.sub_sample, impl=impl)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name == "W.1.weight":
                p.fill_(1.0)
            elif p.dim() > 1:
                p.normal_(std=0.02)
            else:
                p.normal_(std=0.01)
    fmt = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    block = block.to(device=device, dtype=dtype).train()
    if cfg.channels_last:
        block = to_channels_last_3d(block)  # as train.py (Module.to fails on concatenation's Conv2d)
    x = torch.randn(cfg.batch, c, t, h, h, device=device, dtype=dtype).contiguous(memory_format=fmt)
    gz = torch.randn(x.shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    return block, x.requires_grad_(), gz


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(cfg: Config, impl: str, device: str, repeat: int, warmup: int, threads: int, dump: str, q) -> None:
    import torch

    import nlvideo  # noqa: F401  (compat shim first)

    if threads:
        torch.set_num_threads(threads)
    try:
        measure(cfg, impl, device, repeat, warmup, dump, q)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as e:
        # --max-batch probes past the limit: CUDA raises OutOfMemoryError, a failed CPU allocation a
        # RuntimeError from DefaultCPUAllocator. Anything else is a bug and propagates (a crash).
        cpu_oom = "can't allocate memory" in str(e)
        if not (cpu_oom or isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError))):
            raise
        q.put({"oom": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})


def measure(cfg: Config, impl: str, device: str, repeat: int, warmup: int, dump: str, q) -> None:
    import resource

    import torch

    block, x, gz = build(cfg, impl, device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def step():  # noqa: ANN202
        x.grad = None
        block.zero_grad(set_to_none=True)
        z = block(x)
        z.backward(gz)
        return z

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    times = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        z = step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if i == 0:
            torch.save({"z": z.detach().cpu(), "dx": x.grad.cpu()}, dump)
        del z
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    q.put({"ms": [t * 1e3 for t in times], "peak": peak, "saved": saved_bytes(block, x)})


def saved_bytes(block, x) -> int:  # noqa: ANN001
    """Bytes autograd keeps for backward after one forward (unique storages): the activation memory a
    block adds to a network's training step, independent of allocator behaviour."""
    import torch

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = block(x)
    del z
    storages.pop(x.untyped_storage().data_ptr(), None)  # the input belongs to the previous layer
    return sum(storages.values())


def run_one(cfg: Config, impl: str, args: argparse.Namespace, dump: str) -> dict | None:
    """One configuration in a fresh process: its result dict, or None if it crashed or timed out."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    repeat = max(1, args.repeat // 3) if cfg.dtype == "bf16" and args.device == "cpu" else args.repeat
    p = ctx.Process(target=child, args=(cfg, impl, args.device, repeat, args.warmup, args.threads, dump, q))
    p.start()
    res, deadline = None, time.monotonic() + args.timeout
    while res is None and time.monotonic() < deadline:
        try:
            res = q.get(timeout=1.0)
        except queue.Empty:
            if not p.is_alive():  # killed (e.g. by the kernel's OOM killer) or crashed
                break
    p.join(timeout=30)
    if p.is_alive():
        p.kill()
    return res


def largest_fitting(fits: Callable[[int], bool], cap: int) -> int:
    """The largest batch in [1, cap] for which ``fits`` holds (0 if none), assuming it is monotone:
    doubling until the first failure, then bisection between the last success and it."""
    lo, hi = 0, 1
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)  # fits(hi) is False, or hi is past the cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class ProbeFailed(RuntimeError):
    """A --max-batch probe crashed or timed out: an error to report, not a batch that does not fit."""


def max_batch_table(configs: list[Config], args: argparse.Namespace, tmp: str) -> None:
    """Largest batch whose forward + backward fits: on CUDA until out of memory (or over
    ``--memory-gib``), on CPU until the step's peak activation memory exceeds ``--memory-gib``.
    A probe that crashes for another reason makes its cell "error" (its traceback is on stderr)."""
    budget = args.memory_gib * 1024**3 if args.memory_gib else None
    probe_args = argparse.Namespace(**{**vars(args), "repeat": 1, "warmup": 0})
    limit = f"peak activation memory <= {args.memory_gib:g} GiB" if budget else "until out of memory"
    print(f"Largest batch that fits ({limit}; batch sizes probed up to {args.max_batch_cap})\n")
    print("| config | naive max batch | ours max batch | ours / naive |")
    print("|---|---:|---:|---:|")
    for cfg in configs:
        best = {}
        for impl in ("naive", "efficient"):

            def fits(batch: int, impl: str = impl, cfg: Config = cfg) -> bool:
                probe = dataclasses.replace(cfg, batch=batch)
                res = run_one(probe, impl, probe_args, os.path.join(tmp, "p.pt"))
                if res is None:
                    raise ProbeFailed(f"{impl} at batch {batch} crashed or timed out")
                ok = "oom" not in res and (budget is None or res["peak"] <= budget)
                print(f"<!-- {impl} batch {batch}: {'fits' if ok else 'does not fit'} -->", file=sys.stderr)
                return ok

            try:
                best[impl] = largest_fitting(fits, args.max_batch_cap)
            except ProbeFailed as e:
                print(f"<!-- {e} -->", file=sys.stderr)
                best[impl] = None
        ok = best["naive"] and best["efficient"] is not None
        ratio = f"{best['efficient'] / best['naive']:.2f}x" if ok else "—"
        cells = ["error" if best[i] is None else str(best[i]) for i in ("naive", "efficient")]
        label = cfg.label.replace(f" B={cfg.batch}", "")
        print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |", flush=True)


def compare(naive_dump: str, ours_dump: str) -> dict[str, float]:
    """max |naive - ours| of the output z and the input gradient, absolute and relative to max |naive|."""
    import torch

    a, b = torch.load(naive_dump), torch.load(ours_dump)
    out = {}
    for k in ("z", "dx"):
        ref = a[k].float()
        out[k] = (ref - b[k].float()).abs().max().item()
        out[k + "_rel"] = out[k] / max(ref.abs().max().item(), 1e-30)
    return out


def interleaved_grid() -> list[Config]:
    """--interleaved: i3d_nl5's NL block inputs (res3, res4 of 8x8 and 32x2 clips), both layouts, fp32
    and bf16 autocast."""
    shapes = ("8x224² res3", "8x224² res4", "32x224² res3", "32x224² res4")
    grid = itertools.product((False, True), shapes, (False, True))
    return [Config(s, channels_last=cl, autocast=amp) for amp, s, cl in grid]


def take_turns(steps: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each step, the steps taking turns round after round, in reverse order every
    other round; the first ``warmup`` rounds are not kept."""
    names, times = list(steps), {name: [] for name in steps}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            steps[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def turn_ratio(times: dict[str, list[float]], ref: str, name: str) -> float:
    """The median over rounds of ref's time / name's time in the same round (> 1: ``name`` is faster)."""
    return statistics.median(a / b for a, b in zip(times[ref], times[name], strict=True))


def fmt_turns(ts: list[float], scale: float = 1e3, digits: int = 0) -> str:
    """median / fastest of a list of seconds (ms by default)."""
    return f"{statistics.median(ts) * scale:.{digits}f} / {min(ts) * scale:.{digits}f}"


def interleaved_table(configs: list[Config], args: argparse.Namespace) -> None:
    """Forward + backward of one block, naive vs ``impl="efficient"`` taking turns in this process."""
    import torch

    print(f"# torch {torch.__version__}, CPU, threads {torch.get_num_threads()}; {args.rounds} rounds after "
          f"{args.warmup} warm-up, naive and ours taking turns; times: median / fastest\n")
    print("| config | impl=auto takes | naive ms | ours | ours ms | naive / ours | fastest / fastest |")
    print("|---|---|---:|---|---:|---:|---:|")
    for cfg in configs:
        blocks = {impl: build(cfg, impl, "cpu") for impl in ("naive", "efficient", "auto")}
        amp = torch.autocast("cpu", torch.bfloat16, enabled=cfg.autocast)

        def step(impl: str, amp: torch.autocast = amp, blocks: dict = blocks) -> None:
            block, x, gz = blocks[impl]
            x.grad = None
            block.zero_grad(set_to_none=True)
            with amp:
                z = block(x)
            z.backward(gz)

        with amp:
            path = {impl: block.path_for(x).path for impl, (block, x, _) in blocks.items()}
        del blocks["auto"]  # its path is one of the two timed
        times = take_turns({impl: lambda impl=impl: step(impl) for impl in blocks}, args.rounds, args.warmup)
        ratio, best = turn_ratio(times, "naive", "efficient"), min(times["naive"]) / min(times["efficient"])
        print(f"| {cfg.label} | {path['auto']} | {fmt_turns(times['naive'])} | {path['efficient']} "
              f"| {fmt_turns(times['efficient'])} | {ratio:.2f}x | {best:.2f}x |", flush=True)
        for impl, ts in times.items():
            spread = ", ".join(f"{t * 1e3:.0f}" for t in ts)
            print(f"<!-- {cfg.label} {impl}: {spread} ms -->", file=sys.stderr)


def model_step_table(name: str, args: argparse.Namespace) -> None:
    """Whole training steps of model ``name`` built with each ``nonlocal.impl``, taking turns."""
    import torch

    from nlvideo.factory import create_model
    from nlvideo.models import to_channels_last_3d

    impls = ("naive", "efficient", "auto")
    print(f"# torch {torch.__version__}, CPU, threads {torch.get_num_threads()}; {name}, batch {args.batch}, "
          f"{args.size}², SGD training steps; {args.rounds} rounds after {args.warmup} warm-up, the impls "
          "taking turns; times: median / fastest\n")
    print("| frames | layout | " + " | ".join(f"{i} s/step (NL paths)" for i in impls)
          + " | naive / efficient | naive / auto |")
    print("|---|---|" + "---:|" * (len(impls) + 2))
    for frames in args.frames:
        for channels_last in (True, False):
            steps, paths = {}, {}
            for impl in impls:
                torch.manual_seed(0)
                model = create_model(name, num_classes=400, nonlocal_={"impl": impl}).train()
                x = torch.randn(args.batch, 3, frames, args.size, args.size)
                y = torch.randint(0, 400, (args.batch,))
                if channels_last:  # as train.py and scripts/bench_train.py
                    model = to_channels_last_3d(model)
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                      weight_decay=1e-4)
                taken = paths[impl] = set()
                for _, block in model.nonlocal_blocks():  # the path each NL block takes
                    block.register_forward_pre_hook(lambda m, a, t=taken: t.add(m.path_for(a[0]).path))

                def step(model=model, x=x, y=y, opt=opt) -> None:  # noqa: ANN001
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                steps[impl] = step
            times = take_turns(steps, args.rounds, args.warmup)
            cells = [f"{fmt_turns(times[i], 1, 2)} ({', '.join(sorted(paths[i]))})" for i in impls]
            layout = "channels-last" if channels_last else "contiguous"
            ratios = " | ".join(f"{turn_ratio(times, 'naive', i):.2f}x" for i in ("efficient", "auto"))
            print(f"| {frames} | {layout} | {' | '.join(cells)} | {ratios} |", flush=True)
            for impl, ts in times.items():
                spread = ", ".join(f"{t:.2f}" for t in ts)
                print(f"<!-- {frames} {layout} {impl}: {spread} s -->", file=sys.stderr)
            del steps


def fmt_ms(r: dict | None) -> str:
    return "—" if r is None else f"{statistics.median(r['ms']):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="the key rows (default)")
    grid.add_argument("--full", action="store_true", help="every shape x instantiation x batch x dtype x sub")
    ap.add_argument("--only", nargs="+", default=[""], metavar="TEXT",
                    help="run the rows whose label contains one of these texts")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps per run (bf16 on CPU: a third)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in children (0: default)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--max-naive-gib", type=float, default=6.0, help="skip naive runs whose map exceeds this")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    ap.add_argument("--malloc-default", action="store_true", help="keep glibc's dynamic mmap threshold")
    ap.add_argument("--shape", help="C,T,H: one custom shape (emb. gaussian, B=2, fp32) instead of the grid")
    ap.add_argument("--max-batch", action="store_true",
                    help="instead of timing: the largest batch that fits, naive vs ours")
    ap.add_argument("--memory-gib", type=float, default=0.0,
                    help="--max-batch limit on the step's peak activation memory (required on CPU)")
    ap.add_argument("--max-batch-cap", type=int, default=1024, help="--max-batch probes at most this batch")
    grid.add_argument("--interleaved", action="store_true",
                      help="i3d_nl5's block shapes, naive vs ours taking turns in one process (CPU)")
    grid.add_argument("--model-step", metavar="MODEL",
                      help="whole training steps of MODEL per nonlocal.impl, taking turns (CPU)")
    ap.add_argument("--rounds", type=int, default=9, help="--interleaved / --model-step: timed rounds")
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32], help="--model-step: clip lengths")
    ap.add_argument("--size", type=int, default=224, help="--model-step: crop size")
    ap.add_argument("--batch", type=int, default=2, help="--model-step: clips per step")
    args = ap.parse_args()
    if args.interleaved or args.model_step:
        import torch

        import nlvideo  # noqa: F401

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.model_step:
            model_step_table(args.model_step, args)
        else:
            interleaved_table([c for c in interleaved_grid() if any(t in c.label for t in args.only)], args)
        return
    if args.max_batch and args.device == "cpu" and not args.memory_gib:
        ap.error("--max-batch on CPU needs --memory-gib (the process would be OOM-killed, not told)")
    if args.device == "cpu" and not args.malloc_default:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # inherited by the spawned children
    configs = [Config(args.shape)] if args.shape else full_grid() if args.full else QUICK
    configs = [c for c in configs if any(text in c.label for text in args.only)]
    if args.max_batch:
        with tempfile.TemporaryDirectory() as tmp:
            max_batch_table(configs, args, tmp)
        return

    import torch

    import nlvideo  # noqa: F401

    threads = args.threads or torch.get_num_threads()
    print(f"# torch {torch.__version__}, device {args.device}, threads {threads}, median of {args.repeat} "
          f"steps after {args.warmup} warm-up (bf16 on CPU: {max(1, args.repeat // 3)})\n")
    header = ("| config | naive ms | ours ms | speedup | naive peak MiB | ours peak MiB | memory ratio "
              "| naive saved MiB | ours saved MiB | saved ratio | max\\|diff\\| | max\\|dx diff\\| |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configs:
            res = {}
            for impl in ("naive", "efficient"):
                if impl == "naive" and cfg.naive_map_bytes() > args.max_naive_gib * 1024**3:
                    res[impl] = None
                    continue
                res[impl] = run_one(cfg, impl, args, os.path.join(tmp, f"{impl}.pt"))
            nv, ours = res["naive"], res["efficient"]
            speed = mem = diff = ddiff = saved = "—"
            if nv and ours:
                speed = f"{statistics.median(nv['ms']) / statistics.median(ours['ms']):.2f}x"
                mem = f"{ours['peak'] / nv['peak']:.2f}"
                saved = f"{ours['saved'] / nv['saved']:.2f}"
                d = compare(os.path.join(tmp, "naive.pt"), os.path.join(tmp, "efficient.pt"))
                diff = f"{d['z']:.1e} ({d['z_rel']:.0e} rel)"
                ddiff = f"{d['dx']:.1e} ({d['dx_rel']:.0e} rel)"
            note = ""
            if nv is None and cfg.naive_map_bytes() > args.max_naive_gib * 1024**3:
                note = f" (naive skipped: {cfg.naive_map_bytes() / 1024**3:.0f} GiB map)"
            npk = "—" if nv is None else f"{nv['peak'] / MIB:.0f}"
            opk = "—" if ours is None else f"{ours['peak'] / MIB:.0f}"
            nsv = "—" if nv is None else f"{nv['saved'] / MIB:.0f}"
            osv = "—" if ours is None else f"{ours['saved'] / MIB:.0f}"
            print(f"| {cfg.label}{note} | {fmt_ms(nv)} | {fmt_ms(ours)} | {speed} | {npk} | {opk} | {mem} "
                  f"| {nsv} | {osv} | {saved} | {diff} | {ddiff} |", flush=True)
            for impl in ("naive", "efficient"):
                if res[impl] is not None:
                    spread = ", ".join(f"{t:.0f}" for t in res[impl]["ms"])
                    print(f"<!-- {impl}: {spread} ms -->", file=sys.stderr)


if __name__ == "__main__":
    main()
