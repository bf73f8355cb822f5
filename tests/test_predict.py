"""predict.py and nlvideo.Predictor on real mp4 files: eval.py's views and scores, by class name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import nlvideo
from nlvideo.data import ClipSampler, build_dataset, build_loader, clip_spec, read_clip
from nlvideo.engine.evaluate import run_evaluation
from nlvideo.models import ConfigError
from nlvideo.predict import Predictor, collect_videos, parse_views
from tests.test_train_run import REPO, app_env, run_app


def test_predictor_scores_are_eval_multiview_scores(trained_checkpoint):
    """views=3x2: the same clips, probabilities and averaging as eval.py's run_evaluation."""
    predictor = Predictor.from_checkpoint(trained_checkpoint, views="3x2", device="cpu", batch_size=4)
    data = OmegaConf.create(predictor.config["data"])
    data.test.num_clips, data.test.num_crops, data.num_workers = 3, 2, 0
    ds = build_dataset(data, "test")
    loader = build_loader(ds, data, ClipSampler(len(ds), shuffle=False), batch_size=6)
    agg = run_evaluation(predictor.model, loader, ds.num_videos, ds.num_classes, False, lambda m, x: m(x))
    _, scores, _ = agg.result()
    assert predictor.class_names == ds.class_names and predictor.num_views == 6
    for i in (0, ds.num_videos - 1):
        torch.testing.assert_close(predictor.scores(ds.records[i].path), scores[i], rtol=0, atol=1e-6)
    top = predictor.predict(ds.records[0].path, topk=3)
    probs, idx = scores[0].topk(3)
    assert [name for name, _ in top] == [ds.class_names[j] for j in idx]
    torch.testing.assert_close(torch.tensor([p for _, p in top]), probs, rtol=0, atol=1e-6)


def test_a_multi_label_predictor_averages_sigmoids(synthetic_cfg, synthetic_root):
    """Sigmoid per class for a multi-label model (Charades), not softmax; views batched 1 at a time."""
    model = nlvideo.create_model("c2d", num_classes=4, width=8).eval()
    spec = clip_spec(synthetic_cfg, "test")  # 2 clips x 1 crop
    video = str(sorted((synthetic_root / "videos").glob("*.mp4"))[0])
    predictor = Predictor(model, ["a", "b", "c", "d"], spec, multi_label=True, batch_size=1)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.stack([read_clip(spec, video, v)[0] for v in range(2)]))).mean(0)
    torch.testing.assert_close(predictor.scores(video), expected)


def test_views_and_video_arguments(tmp_path):
    assert parse_views("paper") == (10, 3) and parse_views(1) == (1, 1) and parse_views("3x2") == (3, 2)
    with pytest.raises(ConfigError, match="views='ten' is not allowed; choose paper"):
        parse_views("ten")
    for name in ("b/two.MP4", "a/one.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert collect_videos(str(tmp_path)) == [str(tmp_path / "a/one.mp4"), str(tmp_path / "b/two.MP4")]
    assert collect_videos([str(tmp_path / "x.mp4"), tmp_path / "a"]) == [str(tmp_path / "x.mp4"),
                                                                          str(tmp_path / "a/one.mp4")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video files"):
        collect_videos(str(tmp_path / "empty"))


def test_predict_command_json_on_a_folder_skips_unreadable_videos(trained_checkpoint, synthetic_root,
                                                                   tmp_path):
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    for i, src in enumerate(sorted((synthetic_root / "videos").glob("val_*.mp4"))[:2]):
        shutil.copy(src, folder / "sub" / f"clip{i}.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video" * 100)
    (folder / "notes.txt").write_text("not listed")
    r = run_app("predict.py", f"checkpoint={trained_checkpoint}", f"video={folder}", "views=1", "topk=2",
                "output=json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert [Path(o["video"]).name for o in out] == ["broken.mp4", "clip0.mp4", "clip1.mp4"]
    assert "error" in out[0] and f"skipping unreadable video {folder / 'broken.mp4'}" in r.stderr
    for o in out[1:]:
        probs = [c["probability"] for c in o["top"]]
        assert len(probs) == 2 and 1 >= probs[0] >= probs[1] > 0


def test_predict_command_prints_top_classes_and_fails_when_nothing_is_readable(trained_checkpoint,
                                                                                synthetic_root, tmp_path):
    video = sorted((synthetic_root / "videos").glob("*.mp4"))[0]
    r = run_app("predict.py", f"checkpoint={trained_checkpoint}", f"video=[{video}]", "topk=3", "device=cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    classes = json.loads((trained_checkpoint.parents[1] / "classes.json").read_text())
    assert lines[0] == str(video) and len(lines) == 4
    assert all(float(line.split()[0]) > 0 and line.split()[1] in classes for line in lines[1:])
    r = run_app("predict.py", f"checkpoint={trained_checkpoint}", f"video={tmp_path / 'missing.mp4'}")
    assert r.returncode == 1
    assert "(missing file)" in r.stderr and "error: none of the 1 videos could be read" in r.stderr


def write_audio_only(path: Path) -> Path:
    """A real mp4 holding one AAC audio stream and no video stream."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_predict_folder_leaves_out_hidden_files_and_reports_odd_ones(trained_checkpoint, synthetic_root,
                                                                     tmp_path):
    """Hidden folders and files are not labelled; an audio-only file is "no video stream" (not decord's
    internal check) and a broken symbolic link is reported, each in one line naming the file."""
    folder = tmp_path / "videos"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    good = sorted((synthetic_root / "videos").glob("val_*.mp4"))[0]
    for name in ("clip.mp4", ".ipynb_checkpoints/clip-checkpoint.mp4", "._clip.mp4"):
        shutil.copy(good, folder / name)
    audio = write_audio_only(folder / "audio.mp4")
    (folder / "dead.mp4").symlink_to(tmp_path / "moved_away.mp4")
    r = run_app("predict.py", f"checkpoint={trained_checkpoint}", f"video={folder}", "views=1", "output=json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = {Path(o["video"]).name: o for o in json.loads(r.stdout)}
    assert sorted(out) == ["audio.mp4", "clip.mp4", "dead.mp4"] and "top" in out["clip.mp4"]
    assert out["audio.mp4"]["error"] == "no video stream"
    assert out["dead.mp4"]["error"] == "broken symbolic link"
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipping")]
    assert skipped == [f"skipping unreadable video {audio} (no video stream)",
                       f"skipping unreadable video {folder / 'dead.mp4'} (broken symbolic link)"]
    assert "DECORD" not in r.stderr and "video_reader.cc" not in r.stderr


@pytest.mark.parametrize(("argument", "message"), [
    ("video=[]", "error: video=[] names no video: give a file, a folder or a list [a.mp4,b.mp4]"),
    ("topk=abc", "error: topk='abc' must be a whole number >= 1"),
    ("batch_size=0", "error: batch_size=0 must be a whole number >= 1"),
    ("views=100000x1", "error: views=100000x1 is 100000 views per video, more than 300 (10x the paper's"),
])
def test_predict_refuses_bad_arguments_in_one_line(trained_checkpoint, synthetic_root, argument, message):
    video = sorted((synthetic_root / "videos").glob("*.mp4"))[0]
    r = run_app("predict.py", f"checkpoint={trained_checkpoint}", f"video={video}", argument, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(message), r.stderr[-3000:]
    assert len(r.stderr.splitlines()) == 1 and r.stdout == ""


def test_views_are_scored_a_batch_at_a_time(synthetic_cfg, synthetic_root):
    """The model sees batch_size views at a time and they are made a batch at a time (iter_views):
    300 views of 8 x 224² (1.4 GiB together) stay within a few hundred MiB; the scores are the mean
    over all views, as from one batch of them."""
    script = f"""
import resource, torch, nlvideo
from omegaconf import OmegaConf
from nlvideo.predict import Predictor, view_spec
torch.manual_seed(0)
data = OmegaConf.create({OmegaConf.to_container(synthetic_cfg, resolve=True)!r})
data.test_scale = data.test_crop_size = 224
spec = view_spec(data, "100x3")
model = nlvideo.create_model("c2d", num_classes=4, width=8).eval()
seen = []
model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
predictor = Predictor(model, list("abcd"), spec, multi_label=False, batch_size=4)
scores = predictor.scores({str(sorted((synthetic_root / "videos").glob("*.mp4"))[0])!r})
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(len(seen), max(seen), sum(seen), round(grown), float(scores.sum()))
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=app_env(), text=True,
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    calls, largest, views, grown_mib, total = r.stdout.split()
    assert (int(calls), int(largest), int(views)) == (75, 4, 300)
    assert int(grown_mib) < 500, f"peak memory grew by {grown_mib} MiB while scoring 300 views"
    assert abs(float(total) - 1) < 1e-5
