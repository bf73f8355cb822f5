"""eval.py: multi-view test of a checkpoint writes metrics.json, predictions.csv and scores.pt."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

import torch

from tests.test_train_run import REPO, app_env, run_app, tiny_overrides


def test_eval_multiview_on_a_checkpoint(trained_checkpoint, synthetic_root, tmp_path):
    """conftest's checkpoint: c2d_nl1 trained 2 iterations in a run dir named ``train``."""
    ckpt = trained_checkpoint
    train_dir = ckpt.parents[1]

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


def run_eval(*overrides: str, cwd=REPO, kill_at: str | None = None) -> subprocess.CompletedProcess:
    """eval.py as a user runs it, from ``cwd``; ``kill_at``: the output writer's kill point (SIGKILL)."""
    env = app_env() | ({"NLVIDEO_DEBUG_SIGKILL_AT": kill_at} if kill_at else {})
    return subprocess.run([sys.executable, str(REPO / "eval.py"), *overrides], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=240)


def test_eval_files_results_under_the_checkpoints_model(trained_checkpoint, tmp_path):
    """No hydra.run.dir: outputs/eval/<the model the checkpoint was trained as>/<time>, not the
    default model's (c2d) directory."""
    r = run_eval(f"checkpoint={trained_checkpoint}", "data.test.num_clips=1", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "eval").glob("*/*")
    assert run_dir.parent.name == "c2d_nl1"
    assert json.loads((run_dir / "metrics.json").read_text())["model"] == "c2d_nl1"


def result_files(out) -> dict[str, bytes]:
    """The result files of an eval.py run dir by name (not its log, lock or Hydra folder)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and p.suffix != ".log" and not p.name.startswith(".")}


def test_a_killed_eval_never_mixes_two_evaluations_files(trained_checkpoint, tmp_path):
    """SIGKILL while the second evaluation writes its files: the first one's files stay, all of them;
    killed while publishing: no metrics.json and none of the first one's files; then a complete run."""
    other = tmp_path / "other.pt"
    other.write_bytes(trained_checkpoint.read_bytes())
    out = tmp_path / "eval"
    r = run_eval(f"checkpoint={trained_checkpoint}", "data.test.num_clips=1", f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    first = result_files(out)
    metrics = json.loads(first["metrics.json"])
    assert metrics["checkpoint"] == str(trained_checkpoint) and len(metrics["run_id"]) == 12
    assert torch.load(out / "scores.pt", weights_only=False)["run_id"] == metrics["run_id"]

    second = (f"checkpoint={other}", "data.test.num_clips=2", f"hydra.run.dir={out}")
    r = run_eval(*second, kill_at="staged")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert result_files(out) == first

    r = run_eval(*second, kill_at="publishing")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    left = result_files(out)
    assert "metrics.json" not in left and len(left) == 1
    assert all(first[name] != data for name, data in left.items())

    r = run_eval(*second)
    assert r.returncode == 0, r.stderr[-3000:]
    done = result_files(out)
    assert set(done) == set(first) and json.loads(done["metrics.json"])["checkpoint"] == str(other)
    assert not list(out.glob(".results-*"))  # the killed runs' staging folders are gone
