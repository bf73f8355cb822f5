"""Where a training step spends its time: a ``torch.profiler`` table of kernels, grouped.

    python scripts/profile_step.py --device cuda --model i3d_nl5 --batch 32        # the GPU question
    python scripts/profile_step.py --device cpu --batch 2 --size 64 --steps 1       # a rehearsal

Prints (markdown) the versions that decide which kernels run (torch, CUDA, cuDNN), whether a bf16
``Conv3d`` runs on cuDNN kernels (PyTorch 2.9.0 routed half-precision 3-D convolutions with cuDNN
>= 9.8 to a slow fallback, pytorch/pytorch PR 163581; 2.9.1 re-enabled cuDNN >= 9.15), then the
step's device time by group and the top kernels. The step is the one ``bench_train.py`` times
(channels-last, SGD with Nesterov momentum; ``--precision bf16`` under autocast), after
``--warmup`` untimed steps so that cuDNN's autotuner has chosen its kernels.

Kernels are grouped by name (:data:`GROUPS`, first match wins). "non-local" is what only the NL
blocks run (batched matmuls, softmax, attention kernels); their 1x1 convolutions and BN count as
convolution and batch norm, so the NL blocks' real share is somewhat larger than that row.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
from bench_train import training_step  # the step bench_train.py times (scripts/ is on sys.path)
from torch.profiler import ProfilerActivity, profile

import nlvideo  # noqa: F401
from nlvideo.engine.config import resolve_device
from nlvideo.factory import create_model
from nlvideo.models import to_channels_last_3d

GROUPS: tuple[tuple[str, str], ...] = (
    ("optimizer", r"sgd|foreach|multi_tensor|fused_sgd|_amp_update|lerp"),
    ("non-local", r"bmm|softmax|attention|flash|fmha|sdpa|_efficient_attention"),
    ("convolution", r"conv|cudnn|implicit_gemm|xmma|sm\d+_.*gemm|winograd|mkldnn|dgrad|wgrad|fprop|gemm|mm"),
    ("batch norm", r"batch_norm|batchnorm|bn_fw|bn_bw|welford|native_batch_norm"),
    ("pooling", r"pool"),
    ("copies/layout", r"copy|contiguous|transpose|permute|nchw|nhwc|to_copy|cat|clone|fill|zero"),
    ("elementwise/activation", r"relu|threshold|add|mul|elementwise|vectorized|reduce|sum|div|neg|exp"),
)


def group_of(kernel: str) -> str:
    name = kernel.lower()
    return next((group for group, pattern in GROUPS if re.search(pattern, name)), "other")


def kernel_times(step, device: torch.device, steps: int) -> dict[str, float]:
    """Self device time (ms per step) of each kernel (CUDA) or ATen op (CPU) over ``steps`` steps."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    times: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        # On CUDA only kernels have self device time (an ATen op's is its kernels'); on CPU an op's
        # self time excludes the ops it calls.
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0 and not e.key.startswith("ProfilerStep"):
            times[e.key] += us / 1e3 / steps
    return dict(times)


def conv3d_bf16_kernels(device: torch.device) -> list[str]:
    """The kernels a bf16 Conv3d forward + backward runs (channels-last 3-D, as train.py runs it)."""
    conv = torch.nn.Conv3d(64, 64, (3, 3, 3), padding=1).to(device, memory_format=torch.channels_last_3d)
    x = torch.randn(4, 64, 8, 28, 28, device=device, requires_grad=True)
    x = x.contiguous(memory_format=torch.channels_last_3d)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            conv(x).float().sum().backward()

    step()
    times = kernel_times(step, device, 1)
    return sorted((k for k in times if group_of(k) == "convolution"), key=times.get, reverse=True)[:4]


def versions(device: torch.device) -> list[str]:
    rows = [f"torch {torch.__version__}"]
    if device.type == "cuda":
        rows += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}",
                 f"GPU {torch.cuda.get_device_name(device)}"]
    else:
        rows += [f"CPU, {torch.get_num_threads()} threads, oneDNN {torch.backends.mkldnn.is_available()}"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="i3d_nl5")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (times are per step)")
    parser.add_argument("--top", type=int, default=25, help="kernels listed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as train.py, unless trainer.deterministic

    model = to_channels_last_3d(create_model(args.model, num_classes=400).to(device).train())
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 400, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    step = training_step(model, x, y, opt, args.precision == "bf16")
    for _ in range(args.warmup):
        step()
    times = kernel_times(step, device, args.steps)
    total = sum(times.values())

    print(f"# profile_step: {args.model}, {args.precision}, channels-last, batch {args.batch}, "
          f"{args.frames}x{args.size}², {args.steps} profiled steps after {args.warmup}\n")
    print("- " + "\n- ".join(versions(device)))
    print(f"- bf16 Conv3d kernels: {', '.join(conv3d_bf16_kernels(device)) or 'none found'}\n")
    kind = "kernel (CUDA)" if device.type == "cuda" else "ATen op (CPU self time)"
    print(f"Device time per step: {total:.1f} ms\n\n| group | ms/step | share |\n|---|---|---|")
    by_group: dict[str, float] = defaultdict(float)
    for name, ms in times.items():
        by_group[group_of(name)] += ms
    for group, ms in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {ms:.2f} | {ms / total:.1%} |")
    print(f"\n| {kind} | group | ms/step | share |\n|---|---|---|---|")
    for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| `{name[:90]}` | {group_of(name)} | {ms:.2f} | {ms / total:.1%} |")


if __name__ == "__main__":
    main()
