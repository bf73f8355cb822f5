"""eval.py: multi-view test of a checkpoint writes metrics.json, predictions.csv and scores.pt."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import torch

from tests.test_train_run import REPO, app_env, run_app, tiny_overrides


def test_eval_multiview_on_a_checkpoint(synthetic_root, tmp_path):
    train_dir = tmp_path / "train"
    r = run_app("train.py", *tiny_overrides(synthetic_root), "model=c2d_nl1", "trainer.max_iters=2",
                "trainer.eval_period=0", f"hydra.run.dir={train_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = train_dir / "checkpoints" / "checkpoint_000000002.pt"

    out = tmp_path / "eval"
    # Only the checkpoint and the view count are given: model (c2d_nl1), width and data come from it.
    r = run_app("eval.py", f"checkpoint={ckpt}", "data.test.num_clips=3", "data.test.num_crops=2",
                f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "c2d_nl1" and metrics["iteration"] == 2
    assert metrics["num_views"] == 6 and metrics["num_videos"] == 8 and metrics["skipped_videos"] == 0
    assert 0 <= metrics["top1"] <= 100 and "top5" not in metrics  # 4 classes: top-5 is meaningless
    assert metrics["num_views_scored"] == 48 and metrics["loss"] > 0
    with open(out / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert len(per_class) == 4 and sum(int(r["videos"]) for r in per_class) == 8
    assert [float(r["top1"]) for r in per_class] == sorted(float(r["top1"]) for r in per_class)
    assert (out / "confusion.png").stat().st_size > 5_000 and (out / "confused_pairs.csv").is_file()
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["video"].endswith(".mp4") for r in rows)
    scores = torch.load(out / "scores.pt", weights_only=False)
    assert scores["scores"].shape == (8, 4)
    torch.testing.assert_close(scores["scores"].sum(1), torch.ones(8))  # mean of softmaxes
    top1 = 100.0 * float((scores["scores"].argmax(1) == scores["labels"].long()).float().mean())
    assert abs(top1 - metrics["top1"]) < 1e-6

    # The same weights as published weights (model.pretrained=, no checkpoint=): the same scores.
    published = tmp_path / "eval_pretrained"
    r = run_app("eval.py", *tiny_overrides(synthetic_root), "model=c2d_nl1", f"model.pretrained={ckpt}",
                "data.test.num_clips=3", "data.test.num_crops=2", f"hydra.run.dir={published}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    torch.testing.assert_close(torch.load(published / "scores.pt", weights_only=False)["scores"],
                               scores["scores"], rtol=1e-5, atol=1e-6)

    # per-factor accuracy of the same predictions
    r = subprocess.run([sys.executable, "scripts/factor_accuracy.py", str(out)], cwd=REPO, env=app_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| c2d_nl1"))
    _, model, run, it, videos, t1, colour, pair, _ = (c.strip() for c in row.split("|"))
    assert (model, run, it, videos) == ("c2d_nl1", "train", "2", "8")
    assert float(t1) == round(metrics["top1"], 1)
    for k, value in enumerate((colour, pair)):  # <colour>_<pair>: the k-th part of label and prediction
        hits = sum(r["label"].split("_")[k] == r["pred"].split("_")[k] for r in rows)
        assert float(value) == round(100 * hits / len(rows), 1)
    r = subprocess.run([sys.executable, "scripts/factor_accuracy.py", str(train_dir)], cwd=REPO,
                       env=app_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "predictions.csv does not exist" in r.stderr


def test_eval_requires_a_checkpoint(tmp_path):
    r = run_app("eval.py", f"hydra.run.dir={tmp_path}", timeout=60)
    assert r.returncode == 2 and "error: checkpoint is required" in r.stderr
