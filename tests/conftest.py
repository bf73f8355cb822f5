"""Shared fixtures. ``synthetic_root`` is a small generated dataset (real H.264 mp4s), made once per
session; ``synthetic_cfg`` is ``configs/data/synthetic.yaml`` pointed at it (per test, mutable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import nlvideo  # noqa: F401  (torchvision compat shim)

REPO = Path(__file__).resolve().parents[1]
# 4 training and 2 validation videos per class (16 + 8), full 64-frame 64x64 videos.
SMALL_SYNTHETIC = dict(seed=0, train_per_class=4, val_per_class=2, num_frames=64, size=64, fps=24)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Tests that run a script's ``main`` in-process (bench scripts set one thread per process) must
    not leave the next test on another thread count: some ATen kernels depend on it (one-thread
    conv3d returns contiguous weight gradients for channels-last weights, oneDNN's keep their strides)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from nlvideo.data.synthetic import ensure_synthetic

    return ensure_synthetic(
        tmp_path_factory.mktemp("nlvideo_data") / "synthetic", workers=1, **SMALL_SYNTHETIC
    )


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


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A real train.py checkpoint (c2d_nl1, width 8, 2 iterations on ``synthetic_root``) for the
    commands that start from one: predict.py, scripts/export.py."""
    from tests.test_train_run import run_app, tiny_overrides

    run_dir = tmp_path_factory.mktemp("trained")
    r = run_app("train.py", *tiny_overrides(synthetic_root), "model=c2d_nl1", "trainer.max_iters=2",
                "trainer.eval_period=0", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir / "checkpoints" / "checkpoint_000000002.pt"


@pytest.fixture(scope="session")
def two_runs(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    """Two finished train.py runs, ``c2d`` and ``c2d_nl1`` (width 8, 2 epochs x 2 iterations, validated
    after each epoch), in one folder: what nlvideo.compare and TensorBoard are shown."""
    from tests.test_train_run import run_app, tiny_overrides

    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("c2d", "c2d_nl1"):
        run_dir = base / model
        r = run_app("train.py", f"model={model}", *tiny_overrides(synthetic_root), "trainer.epochs=2",
                    "trainer.debug.max_iters_per_epoch=2", "trainer.deterministic=false",
                    f"hydra.run.dir={run_dir}")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        runs[model] = run_dir
    return runs
