"""Run comparison and attention visualisation on the outputs of two tiny real training runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nlvideo.compare import compare, find_event_dirs, load_run
from nlvideo.data import build_dataset
from nlvideo.models import build_video_resnet
from nlvideo.visualize import block_attention, load_clip, render
from tests.test_train_run import REPO, app_env, run_app, tiny_overrides


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=app_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


QUICK = ["trainer.epochs=2", "trainer.debug.max_iters_per_epoch=2", "trainer.deterministic=false"]


@pytest.fixture(scope="module")
def two_runs(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for model in ("c2d", "c2d_nl1"):
        run_dir = base / model
        r = run_app(
            "train.py", f"model={model}", *tiny_overrides(synthetic_root), *QUICK, f"hydra.run.dir={run_dir}"
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        runs[model] = run_dir
    return runs


def test_compare_writes_curves_png_and_table_with_both_runs(two_runs, tmp_path):
    result = run_module("nlvideo.compare", *map(str, two_runs.values()), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    image = Image.open(tmp_path / "curves.png")
    image.verify()
    assert image.size[0] >= 800 and image.size[1] >= 300
    assert (tmp_path / "curves.png").stat().st_size > 20_000  # two panels with curves, not a blank canvas
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| c2d")]
    assert [row.split("|")[1].strip() for row in rows] == ["c2d", "c2d_nl1"]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "1"]
    assert all(row.split("|")[4].strip() == "4" for row in rows)  # last iteration: 2 epochs x 2
    assert result.stdout.count("| c2d") == 2


def test_runs_are_read_with_their_curves_and_hparams(two_runs):
    run = load_run(find_event_dirs([two_runs["c2d_nl1"]])[0])
    assert run.model == "c2d_nl1" and run.hparams["num_nonlocal"] == 1
    steps, values = run.series("train/top1")
    assert steps.tolist() == [1, 2, 3, 4] and ((values >= 0) & (values <= 100)).all()
    assert run.series("val/top1")[0].tolist() == [2, 4]


def test_runs_of_different_lengths_and_in_progress_runs_are_compared(two_runs, tmp_path):
    """A run whose event file stops early (as one still training) is plotted up to where it is."""
    from torch.utils.tensorboard import SummaryWriter

    partial = tmp_path / "partial" / "tb"
    writer = SummaryWriter(str(partial))
    writer.add_scalar("train/top1", 20.0, 1)
    writer.flush()  # not closed: like a live run
    png, md = compare([*two_runs.values(), partial.parent], tmp_path / "out")
    assert png.is_file() and "| partial | ? | 1 | 1 |" in md.read_text()
    writer.close()


def test_directory_without_event_files_is_a_clear_error(two_runs, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    result = run_module("nlvideo.compare", str(two_runs["c2d"]), str(empty))
    assert result.returncode == 2
    assert f"no TensorBoard event files (events.out.tfevents.*) under {empty}" in result.stderr


def test_visualize_a_trained_checkpoint_writes_a_png(two_runs, tmp_path):
    checkpoint = sorted((two_runs["c2d_nl1"] / "checkpoints").glob("checkpoint_*.pt"))[-1]
    out = tmp_path / "attention.png"
    result = run_module(
        "nlvideo.visualize", "--checkpoint", str(checkpoint), "--sample", "1", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    image.verify()
    assert image.size[0] > 4 * image.size[1]  # a strip of the clip's frames


def test_visualised_clip_is_the_datasets_validation_view(synthetic_cfg):
    ds = build_dataset(synthetic_cfg, "val")
    clip, shown = load_clip(ds.records[3].path, synthetic_cfg)
    assert torch.equal(clip, ds[3 * ds.num_views]["clip"])
    assert shown.shape == (8, 48, 48, 3) and shown.dtype == "uint8"


@pytest.mark.parametrize("instantiation", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"])
def test_attention_of_every_instantiation_is_a_distribution_over_keys(instantiation, tmp_path):
    torch.manual_seed(0)
    model = build_video_resnet(
        name="v",
        arch="c2d",
        num_classes=3,
        width=8,
        **{"nonlocal": {"positions": {"res3": [1]}, "instantiation": instantiation}},
    ).eval()
    clip = torch.randn(3, 8, 64, 64)
    att = block_attention(model, clip, "res3.nl1", query=(1, 2, 3))
    assert att.query_grid == (4, 8, 8) and att.weights.shape == (4, 4, 4)  # 1x2x2-pooled keys
    assert att.weights.min() >= 0 and abs(att.weights.sum() - 1) < 1e-5
    auto = block_attention(model, clip, "res3.nl1")  # fresh block = identity: any query, still valid
    assert all(0 <= q < g for q, g in zip(auto.query, auto.query_grid, strict=True))
    frames = (torch.rand(8, 64, 64, 3) * 255).byte().numpy()
    assert render(frames, att, tmp_path / f"{instantiation}.png").stat().st_size > 10_000


def test_bad_block_and_query_are_named():
    model = build_video_resnet(
        name="v", arch="c2d", num_classes=3, width=8, **{"nonlocal": {"positions": {"res3": [1]}}}
    ).eval()
    clip = torch.randn(3, 8, 64, 64)
    with pytest.raises(ValueError, match=r"no non-local block 'res4.nl4'; the model has: res3.nl1"):
        block_attention(model, clip, "res4.nl4")
    with pytest.raises(ValueError, match=r"query \(9, 0, 0\) outside the block's feature grid"):
        block_attention(model, clip, "res3.nl1", (9, 0, 0))
