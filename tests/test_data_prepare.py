"""``python -m nlvideo.data.prepare`` on generated downloads: both Kinetics layouts and Charades, with a
corrupt file, a 4K file, audio and a missing video; outputs read back (short side, key-frame interval,
frame count, no audio, frames); resume after SIGKILL; prepare -> check -> train -> eval."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from omegaconf import OmegaConf

from nlvideo.data import build_dataset
from nlvideo.data.check import main as check
from nlvideo.data.prepare.__main__ import main as prepare
from tests.conftest import REPO
from tests.hostile import coded_frames, encode, text_as_mp4
from tests.test_data_dataset import kinetics_cfg
from tests.test_train_run import app_env, run_app

SMALL = ["--short-side", "32", "--gop", "4"]


def with_audio(path: Path, num_frames: int = 12) -> Path:
    """An index-coded 64x48 video with an AAC audio track."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for rgb in coded_frames(num_frames, 48, 64):
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        for stream, frame in ((audio, sound), (audio, None), (video, None)):
            for packet in stream.encode(frame):
                container.mux(packet)
    return path


def read_back(path: Path) -> tuple[tuple[int, int], list[int], int, list[int]]:
    """``(H, W)``, positions of the key frames, number of streams and the index code of each frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        keys = [i for i, packet in enumerate(packets) if packet.is_keyframe]
        container.seek(0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        ids = [round(float(f[f.shape[0] // 2 :].mean()) / 3) for f in frames]
        return frames[0].shape[:2], keys, len(container.streams), ids


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory) -> tuple[Path, Path, str]:
    """Kinetics downloaded as class folders (spaces in a class name, a long-GOP 4K video, one with audio,
    a text file named .mp4), prepared into DST with 2 workers. Returns (SRC, DST, printed summary)."""
    src = tmp_path_factory.mktemp("kinetics_raw")
    for split, per_class in (("train", 2), ("validate", 1)):
        for cls in ("air drumming", "abseiling"):
            for i in range(per_class):
                encode(src / split / cls / f"{cls[:3]}{i}_000001_000011.mp4", num_frames=24 + 4 * i,
                       gop=100_000)
    encode(src / "train" / "abseiling" / "uhd_000000_000010.mp4", num_frames=3, width=3840, height=2160)
    with_audio(src / "train" / "air drumming" / "sound_000002_000012.mp4")
    text_as_mp4(src / "train" / "abseiling" / "broken_000000_000010.mp4")
    dst = tmp_path_factory.mktemp("kinetics") / "k400"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "2"]) == 0
    return src, dst, printed.getvalue()


def test_kinetics_folders_prepared_and_read_back(kinetics):
    src, dst, printed = kinetics
    assert "9 videos found, 8 prepared (8 now, 0 already done), 1 failed" in printed
    report = json.loads((dst / "prepare_report.json").read_text())
    assert [f["source"] for f in report["failed"]] == [str(src / "train/abseiling/broken_000000_000010.mp4")]
    assert report["failed"][0]["reason"].startswith("InvalidDataError")
    assert report["summary"]["hours_of_video"] > 0
    assert report["lists"] == ["classids.json", "train.csv", "val.csv"]
    assert json.loads((dst / "classids.json").read_text()) == {"abseiling": 0, "air drumming": 1}
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.mp4"))
    assert len(outputs) == 8 and not list(dst.rglob(".*.part"))
    for rel in outputs:
        source = next(src.rglob(Path(rel).name))
        size, keys, streams, ids = read_back(dst / rel)
        _, _, _, source_ids = read_back(source)
        assert min(size) == 32 and size[0] % 2 == size[1] % 2 == 0, rel
        assert keys[0] == 0 and max(np.diff([*keys, len(ids)])) <= 4, (rel, keys)  # --gop 4
        assert streams == 1 and ids == source_ids, rel  # audio dropped, every frame kept in order
    assert read_back(dst / "train/abseiling/uhd_000000_000010.mp4")[0] == (32, 56)  # 3840x2160: aspect kept
    cfg = kinetics_cfg(dst, num_frames=4, sampling_rate=2)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (train.num_videos, val.num_videos, train.class_names) == (6, 2, ["abseiling", "air drumming"])
    assert sorted(r.label for r in val.records) == [0, 1]
    assert build_dataset(OmegaConf.merge(cfg, {"format": "kinetics_folder"}), "val").num_videos == 2


def test_prepare_check_train_eval(kinetics, tmp_path, capsys):
    """The prepared dataset passes the check, trains with one video excluded, and is evaluated."""
    _, dst, _ = kinetics
    data = [f"data.root={dst}", "data.num_classes=2", "data.train_jitter_scales=[32,40]",
            "data.train_crop_size=32", "data.test_scale=32", "data.test_crop_size=32"]
    assert check(["data=kinetics400", *data, "--workers", "1", "--out", str(tmp_path / "check")]) == 0
    report = json.loads((tmp_path / "check" / "check_report.json").read_text())
    assert report["videos"] == 8 and report["counts"]["unreadable"] == report["counts"]["empty"] == 0
    assert (tmp_path / "check" / "exclude.txt").read_text() == ""
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("train/abseiling/uhd_000000_000010.mp4\tmy reason\n")
    run = [*data, "data=kinetics400", "data.num_workers=0", "data.batch_size=2", "model.width=8",
           "trainer.progress=lines", "trainer.precise_bn.num_batches=1", "data.test.num_clips=1"]
    r = run_app("train.py", *run, "trainer.max_iters=2", "trainer.eval_period=0",
                f"data.exclude_list={exclude}", f"hydra.run.dir={tmp_path / 'train'}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "train: 1 of 6 videos left out by data.exclude_list=" in r.stdout + r.stderr
    r = run_app("eval.py", *run, f"checkpoint={tmp_path / 'train/checkpoints/checkpoint_000000002.pt'}",
                f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_videos"] == 2


def test_kinetics_official_csvs(tmp_path, capsys):
    """A flat download with the official CSVs: both file namings, class names with spaces and
    parentheses, a video not downloaded, the unlabelled test CSV."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    encode(src / "videos" / "ytA_000001_000011.mp4", num_frames=12)
    encode(src / "videos" / "ytB.mp4", num_frames=14)
    encode(src / "videos" / "ytD_000003_000013.mp4", num_frames=16)
    header = "label,youtube_id,time_start,time_end,split,is_cc\n"
    (src / "train.csv").write_text(header + '"passing American football (in game)",ytA,1,11,train,0\n'
                                   "abseiling,ytB,0,10,train,0\nabseiling,ytC,5,15,train,0\n")
    (src / "validate.csv").write_text(header + "abseiling,ytD,3,13,val,0\n")
    (src / "test.csv").write_text("youtube_id,time_start,time_end,split\nytE,0,10,test\n")
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "3 videos found, 3 prepared (3 now, 0 already done), 0 failed, 1 listed but" in printed
    report = json.loads((dst / "prepare_report.json").read_text())
    assert [m["where"] for m in report["not_downloaded"]] == [f"{src / 'train.csv'}:4"]
    assert report["notes"] == ["1 CSV rows without a label or split (the test set) skipped"]
    assert (dst / "train.csv").read_text().splitlines() == [
        "train/abseiling/ytB.mp4\t0", "train/passing American football (in game)/ytA_000001_000011.mp4\t1"]
    assert (dst / "val.csv").read_text() == "val/abseiling/ytD_000003_000013.mp4\t0\n"
    ds = build_dataset(kinetics_cfg(dst), "train")
    assert ds.class_names == ["abseiling", "passing American football (in game)"]


def charades_csv(path: Path, rows: list[tuple[str, str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "subject", "script", "actions", "length"])
        for vid, actions, length in rows:
            writer.writerow([vid, "S1", "A person sits, then, stands.", actions, length])


def test_charades_prepared_at_30_fps_and_checked(tmp_path, capsys):
    src, dst = tmp_path / "charades_raw", tmp_path / "charades"
    for vid in ("A1", "B2", "F6", "D4"):  # 40 frames at 24 fps: 1.67 s
        encode(src / "Charades_v1_480" / f"{vid}.mp4", num_frames=40, width=96, height=64)
    text_as_mp4(src / "Charades_v1_480" / "C3.mp4")
    charades_csv(src / "Charades_v1_train.csv", [("A1", "c000 0.0 1.0", 1.67), ("B2", "c001 0.5 1.5", 5.0)])
    charades_csv(src / "Charades_v1_test.csv", [("C3", "", 1.67), ("F6", "c000 0.0 1.6", 1.67),
                                                ("E5", "c001 0.0 1.0", 1.67)])
    (src / "Charades_v1_classes.txt").write_text("c000 Sitting\nc001 Standing\n")
    assert prepare(["charades", str(src), str(dst), *SMALL, "--fps", "30", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 videos found, 3 prepared (3 now, 0 already done), 1 failed, 1 listed but not" in printed
    assert "1 videos in " in printed and "are in neither CSV" in printed
    assert sorted(p.name for p in (dst / "Charades_v1_480").iterdir()) == ["A1.mp4", "B2.mp4", "F6.mp4"]
    size, keys, _, ids = read_back(dst / "Charades_v1_480" / "A1.mp4")
    assert size == (32, 48) and len(ids) == 50  # 1.67 s at 30 fps
    assert ids == [round(j * 24 / 30) for j in range(50)]  # each the source frame on screen at j/30 s
    with (dst / "Charades_v1_test.csv").open(newline="") as f:
        assert [row["id"] for row in csv.DictReader(f)] == ["F6"]  # failed and missing rows left out
    assert (dst / "Charades_v1_train.csv").read_text().splitlines()[1] == \
        'A1,S1,"A person sits, then, stands.",c000 0.0 1.0,1.67'
    data = ["data=charades", "data.num_classes=2", "data.class_file=Charades_v1_classes.txt",
            "data.train_jitter_scales=[32,40]", "data.train_crop_size=32", "data.test_scale=32",
            "data.test_crop_size=32", "data.num_frames=4", "data.sampling_rate=2", "--workers", "1"]
    assert check([f"data.root={dst}", *data, "--out", str(tmp_path / "prepared")]) == 0
    report = json.loads((tmp_path / "prepared" / "check_report.json").read_text())
    problems = [(p["path"], p["kind"]) for p in report["problems"]]
    assert problems == [("Charades_v1_480/B2.mp4", "length_mismatch")]
    assert check([f"data.root={src}", *data, "--out", str(tmp_path / "raw")]) == 1  # the download itself
    report = json.loads((tmp_path / "raw" / "check_report.json").read_text())
    assert report["charades_unlisted_videos"] == ["Charades_v1_480/D4.mp4"]
    assert {p["path"]: p["kind"] for p in report["problems"] if p["kind"] == "unreadable"} == {
        "Charades_v1_480/C3.mp4": "unreadable", "Charades_v1_480/E5.mp4": "unreadable"}


def test_rerun_after_sigkill_finishes_with_the_same_outputs(tmp_path):
    src = tmp_path / "raw"
    for i in range(16):
        encode(src / "train" / f"c{i % 2}" / f"v{i:02d}.mp4", num_frames=30, width=96, height=64)
    args = ["kinetics", str(src), str(tmp_path / "resumed"), *SMALL, "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "nlvideo.data.prepare", *args], cwd=REPO, env=app_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while not list((tmp_path / "resumed").rglob("v*.mp4")) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((tmp_path / "resumed").rglob("v*.mp4")))
    assert 0 < finished < 16 and not (tmp_path / "resumed" / "train.csv").exists()
    assert prepare(args) == 0
    summary = json.loads((tmp_path / "resumed" / "prepare_report.json").read_text())["summary"]
    assert (summary["already_done"], summary["encoded_now"]) == (finished, 16 - finished)
    assert prepare(["kinetics", str(src), str(tmp_path / "fresh"), *SMALL, "--workers", "1"]) == 0
    resumed, fresh = (
        {p.relative_to(root): p.read_bytes() for p in root.rglob("*")
         if p.is_file() and p.name not in ("prepare_report.json", ".nlvideo.lock")}  # the lock names its pid
        for root in (tmp_path / "resumed", tmp_path / "fresh"))
    assert resumed == fresh and len(fresh) == 16 + 3  # videos, train.csv, classids.json, prepare.json
    assert prepare([*args[:-2], "--short-side", "48"]) == 2  # other options: refused, nothing mixed
