"""Shared fixtures. ``synthetic_root`` is a small generated dataset (real H.264 mp4s), made once per
session; ``synthetic_cfg`` is ``configs/data/synthetic.yaml`` pointed at it (per test, mutable).

The trained runs (``trained_checkpoint``, ``two_runs``, ``reference_run``) are made once per test session
and read by every test that needs one, also across pytest-xdist workers (:func:`built_once`); a test that
changes a run works on a copy."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import nlvideo  # noqa: F401  (torchvision compat shim)

REPO = Path(__file__).resolve().parents[1]
# 4 training and 2 validation videos per class (16 + 8), full 64-frame 64x64 videos.
SMALL_SYNTHETIC = dict(seed=0, train_per_class=4, val_per_class=2, num_frames=64, size=64, fps=24)


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker gives torch its share of the cores (1 each with ``-n 2`` on 2 cores).
    With the default, every worker runs as many OpenMP threads as there are cores, and threads that spin
    waiting for descheduled peers made small in-process kernels (gradcheck, exports) 10x slower. The
    scripts the tests start run one thread each already (``OMP_NUM_THREADS=1``, test_train_run.app_env)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Tests that run a script's ``main`` in-process (bench scripts set one thread per process) must
    not leave the next test on another thread count: some ATen kernels depend on it (one-thread
    conv3d returns contiguous weight gradients for channels-last weights, oneDNN's keep their strides)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``<session temp>/<name>``, made by ``build(path)`` once per test session. Under pytest-xdist the
    workers share it: the first one builds it while the others wait on a lock, then all read the same
    files (training the same tiny run on each worker would cost every worker its seconds of CPU)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above the workers' own
    path, done = base / name, base / f".{name}.done"
    with open(base / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a worker whose build failed left it half made
            path.mkdir(parents=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """One copy for the session, its workers included: the shared runs below record its path."""
    from nlvideo.data.synthetic import ensure_synthetic

    def build(base: Path) -> None:
        ensure_synthetic(base / "synthetic", workers=1, **SMALL_SYNTHETIC)

    return built_once(tmp_path_factory, "nlvideo_data", build) / "synthetic"


@pytest.fixture
def synthetic_cfg(synthetic_root):
    """The ``data`` config of the default synthetic dataset, on the small generated copy, 0 workers."""
    cfg = OmegaConf.load(REPO / "configs" / "data" / "synthetic.yaml")
    cfg.root = str(synthetic_root)
    cfg.generate = dict(SMALL_SYNTHETIC)
    cfg.num_workers = 0
    cfg.batch_size = 4
    return cfg


def _index_coded_frames(num_frames: int, height: int, width: int):
    """Flat grey frames whose level encodes the frame index (3 * t), plus a bright marker square
    in the top-left corner so crops/flips are visible."""
    import numpy as np

    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t] = 3 * t
        frames[t, : height // 4, : width // 4] = 255
    return frames


@pytest.fixture(scope="session")
def make_video():
    """``make_video(path, num_frames=40, width=64, height=48, fps=24)`` writes an index-coded H.264 mp4:
    frame t is grey level 3t (mean of the lower-right part decodes to 3t within a few levels)."""
    from nlvideo.data.synthetic import write_mp4

    def make(path, num_frames=40, width=64, height=48, fps=24, faststart=False):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, _index_coded_frames(num_frames, height, width), fps=fps, crf=10, faststart=faststart)
        return path

    return make


def decoded_frame_ids(clip, mean=114.75, std=57.375):
    """Frame indices of an index-coded clip (3, T, H, W) after normalisation (lower-right quarter)."""
    h, w = clip.shape[-2:]
    pixels = clip[:, :, h // 2 :, w // 2 :] * std + mean
    return [round(v / 3) for v in pixels.mean(dim=(0, 2, 3)).tolist()]


def train_tiny(root: Path, run_dir: Path, *overrides: str) -> str:
    """train.py with the tests' tiny settings on ``root``; asserts it succeeds, returns its stdout."""
    from tests.test_train_run import run_app, tiny_overrides

    r = run_app("train.py", *tiny_overrides(root), *overrides, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A real train.py checkpoint (c2d_nl1, width 8, 2 iterations on ``synthetic_root``, run dir
    ``.../train``) for the commands that start from one: eval.py, predict.py, scripts/export.py."""
    def build(base: Path) -> None:
        train_tiny(synthetic_root, base / "train", "model=c2d_nl1", "trainer.max_iters=2",
                   "trainer.eval_period=0")

    run_dir = built_once(tmp_path_factory, "trained", build) / "train"
    return run_dir / "checkpoints" / "checkpoint_000000002.pt"


@pytest.fixture(scope="session")
def two_runs(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """Two finished train.py runs, ``c2d`` and ``c2d_nl1`` (width 8, 2 epochs x 2 iterations, validated
    after each epoch), in one folder: what nlvideo.compare and TensorBoard are shown."""
    models = ("c2d", "c2d_nl1")

    def build(base: Path) -> None:
        for model in models:
            train_tiny(synthetic_root, base / model, f"model={model}", "trainer.epochs=2",
                       "trainer.debug.max_iters_per_epoch=2", "trainer.deterministic=false")

    base = built_once(tmp_path_factory, "runs", build)
    return {model: base / model for model in models}


@pytest.fixture(scope="session")
def reference_run(synthetic_root, tmp_path_factory) -> Path:
    """The uninterrupted baseline run (``tests.test_train_run.REFERENCE``: 2 epochs x 4 iterations, a
    checkpoint every 2, validated after each epoch, deterministic) that killed-and-resumed runs must
    reproduce bit for bit; its stdout is ``stdout.txt`` beside the run dir."""
    from tests.test_train_run import REFERENCE

    def build(base: Path) -> None:
        out = train_tiny(synthetic_root, base / "reference", *REFERENCE)
        (base / "stdout.txt").write_text(out)

    return built_once(tmp_path_factory, "reference", build) / "reference"
