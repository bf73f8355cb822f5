"""What TensorBoard shows of a training run: the curves, gradient norm, learning rates, validation loss,
the attention image, the comparison layout, and ``metrics.csv``; read from the event files and back
through a real ``tensorboard`` server's HTTP data API."""

from __future__ import annotations

import csv
import io
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from nlvideo.compare import compare
from nlvideo.engine.logging import write_history_row
from tests.test_train_run import app_env


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_logs_gradient_norm_learning_rates_validation_loss_and_attention(two_runs):
    acc = events(two_runs["c2d_nl1"])
    tags = set(acc.Tags()["scalars"])
    assert {"train/grad_norm", "train/lr/group0", "train/lr/group1", "loss/val", "accuracy/val_top1"} <= tags
    # GPU memory is logged with each logging window on CUDA only; trainer.device=auto trained on CUDA
    # exactly where this process sees a GPU.
    on_gpu = "| device cuda" in (two_runs["c2d_nl1"] / "train.log").read_text()
    assert on_gpu == torch.cuda.is_available()
    if on_gpu:
        for tag in ("train/gpu_max_allocated_GiB", "train/gpu_reserved_GiB"):
            assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4], tag
            assert all(0 < e.value < 80 for e in acc.Scalars(tag)), tag  # GiB, not bytes
    else:
        assert not any(t.startswith("train/gpu_") for t in tags)  # CPU: no GPU memory
    norms = acc.Scalars("train/grad_norm")
    assert [e.step for e in norms] == [1, 2, 3, 4] and all(0 < e.value < 1e3 for e in norms)
    assert [e.value for e in acc.Scalars("train/lr/group0")] == [e.value for e in acc.Scalars("train/lr")]
    assert [e.step for e in acc.Scalars("loss/val")] == [2, 4]
    assert all(0 < e.value < 10 for e in acc.Scalars("loss/val"))

    images = acc.Images("val/attention")  # every validation, the same clip
    assert [i.step for i in images] == [2, 4]
    picture = Image.open(io.BytesIO(images[-1].encoded_image_string))
    # legible at a card's width: two rows of large tiles (a strip of 8 frames shrank to ~240 px high)
    assert picture.size[1] >= 600 and picture.size[0] < 2 * picture.size[1], picture.size
    assert "val/attention" not in events(two_runs["c2d"]).Tags()["images"]  # no NL block, no picture


def test_metrics_csv_has_one_row_per_validation(two_runs):
    rows = read_rows(two_runs["c2d_nl1"] / "metrics.csv")
    assert [(r["epoch"], r["iteration"]) for r in rows] == [("1", "2"), ("2", "4")]
    assert {"time", "train_epoch_loss", "train_epoch_top1", "val_top1", "val_loss", "best"} <= set(rows[0])
    logged = [e.value for e in events(two_runs["c2d_nl1"]).Scalars("accuracy/val_top1")]
    assert [float(r["val_top1"]) for r in rows] == pytest.approx(logged, abs=1e-4)


def test_history_rows_repeated_by_a_resume_are_replaced_and_new_columns_kept(tmp_path):
    path = tmp_path / "metrics.csv"
    write_history_row(path, {"epoch": 1, "iteration": 4, "val_top1": 25.0})
    write_history_row(path, {"epoch": 2, "iteration": 8, "val_top1": 50.0})
    write_history_row(path, {"epoch": 2, "iteration": 8, "val_top1": 75.0, "val_top5": 100.0})  # resumed
    rows = read_rows(path)
    assert [(r["iteration"], r["val_top1"], r["val_top5"]) for r in rows] == [("4", "25.0", ""),
                                                                              ("8", "75.0", "100.0")]


class TensorBoardServer:
    """``tensorboard --logdir`` on a free loopback port, its HTTP data API, stopped on exit."""

    def __init__(self, logdir: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
             "--port", "0", "--load_fast", "false", "--reload_interval", "0"],
            env=app_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline, seen = time.monotonic() + 20, []
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
            except queue.Empty:
                break
            if m := re.search(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+)/", seen[-1]):
                self.url = m.group(1)
                return
        self.stop()
        raise AssertionError(f"tensorboard did not start: {''.join(seen)[-2000:]}")

    def get(self, route: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{route}{query}", timeout=10) as response:
            return response.read()

    def json(self, route: str, **params: str):
        return json.loads(self.get(route, **params))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_tensorboard_server_shows_compared_runs_by_name_with_scalars_images_and_layout(two_runs, tmp_path):
    """``nlvideo.compare`` links the runs under their labels; TensorBoard over those links, as a browser
    reads it (its HTTP data API)."""
    compare(list(two_runs.values()), tmp_path, tensorboard=True)
    server = TensorBoardServer(tmp_path / "tensorboard")
    try:
        deadline = time.monotonic() + 15  # the event files load in the background
        while sorted(server.json("/data/runs")) != ["c2d", "c2d_nl1"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(server.json("/data/runs")) == ["c2d", "c2d_nl1"]
        tags = server.json("/data/plugin/scalars/tags")
        for run in ("c2d", "c2d_nl1"):
            assert {"accuracy/train_top1", "loss/train", "train/grad_norm", "accuracy/val_top1",
                    "loss/val"} <= set(tags[run])
            # TensorBoard sorts cards by tag: accuracy and loss first (they followed data/skipped_videos
            # and throughput)
            groups = [t.split("/")[0] for t in sorted(tags[run])]
            heads = [g for g in groups if g in ("accuracy", "loss")]
            assert groups[:len(heads)] == heads and len(heads) >= 5, groups
        points = server.json("/data/plugin/scalars/scalars", run="c2d_nl1", tag="accuracy/val_top1")
        logged = events(two_runs["c2d_nl1"]).Scalars("accuracy/val_top1")
        assert [(step, value) for _, step, value in points] == [(e.step, e.value) for e in logged]

        assert list(server.json("/data/plugin/images/tags")) == ["c2d_nl1"]  # c2d has no NL block
        shown = server.json("/data/plugin/images/images", run="c2d_nl1", tag="val/attention")
        assert [image["step"] for image in shown] == [2, 4]
        png = server.get("/data/plugin/images/individualImage?" + shown[-1]["query"])
        assert Image.open(io.BytesIO(png)).size[0] > 1000

        layout = server.json("/data/plugin/custom_scalars/layout")  # both runs' layouts, merged
        (category,) = layout["category"]
        # a chart colours by run: train and val loss on one chart shared a colour, so each has its own
        assert [chart["title"] for chart in category["chart"]] == [
            "train top-1 (%)", "val/top1 (%)", "train loss", "val loss", "learning rate"]

        # The HPARAMS page asks for 5 hparams and shows those columns: they used to be data, gflops,
        # global_batch, instantiation and lr (sorted by name), hiding model and num_nonlocal.
        request = urllib.request.Request(
            f"{server.url}/data/plugin/hparams/experiment", headers={"Content-Type": "application/json"},
            data=json.dumps({"experimentName": "", "hparamsLimit": 5}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:
            shown = [info["name"] for info in json.loads(response.read())["hparamInfos"]]
        assert {"model", "num_nonlocal"} <= set(shown) and len(shown) == 5, shown
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_the_attention_image_has_a_heat_map_on_every_frame():
    """With 4 key time steps for 8 frames the heat map was drawn on every other frame only."""
    import numpy as np

    from nlvideo.visualize import Attention, attention_figure

    weights = np.random.default_rng(0).random((4, 6, 6))
    att = Attention("res4.1.nonlocal", "embedded_gaussian", (1, 2, 3), (4, 6, 6), weights / weights.sum())
    fig = attention_figure(np.zeros((8, 48, 48, 3), dtype=np.uint8), att)
    frames = [ax for ax in fig.axes if ax.get_title()]
    assert len(frames) == 8 and all(len(ax.images) == 2 for ax in frames)  # the frame and its heat map
    assert [ax.get_title() for ax in frames][:3] == ["frame 0 (keys t=0)", "frame 1 (keys t=0)",
                                                     "frame 2 (keys t=1)"]
    assert min(ax.title.get_fontsize() for ax in frames) >= 12


def test_runs_of_the_default_layout_are_listed_by_model_and_seed(synthetic_root, tmp_path):
    """Over outputs/train two runs of one model read 'c2d/<time>/tb' and differ only by time; the runs a
    plain `train.py` writes are also listed in outputs/tensorboard by model, seed and time."""
    from tests.test_train_run import REPO, tiny_overrides

    for seed in (0, 1):
        r = subprocess.run([sys.executable, str(REPO / "train.py"), *tiny_overrides(synthetic_root),
                            "trainer.max_iters=1", "trainer.eval_period=0", f"seed={seed}"],
                           cwd=tmp_path, env=app_env(), text=True, capture_output=True, timeout=240)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    times = sorted(p.name for p in (tmp_path / "outputs" / "train" / "c2d").iterdir())
    expected = [f"c2d seed=0 {times[0]}", f"c2d seed=1 {times[1]}"]
    assert f"lists this run as '{expected[1]}'" in r.stdout
    server = TensorBoardServer(tmp_path / "outputs" / "tensorboard")
    try:
        deadline = time.monotonic() + 15  # the event files load in the background
        while sorted(server.json("/data/runs")) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(server.json("/data/runs")) == expected
        assert "loss/train" in server.json("/data/plugin/scalars/tags")[expected[0]]
    finally:
        server.stop()
