"""``python -m nlvideo.data.check`` on the hostile dataset (tests/hostile.py): every problem kind found,
the exclude list written and read back through ``data.exclude_list``; config errors in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from nlvideo.data import build_dataset
from nlvideo.data.check import main as check
from nlvideo.data.dataset import check_data_config
from tests.hostile import BROKEN, make_hostile_root
from tests.test_reliability_videos import data_cfg

SMALL = ["data.num_classes=2", "data.train_jitter_scales=[32,40]", "data.train_crop_size=32",
         "data.test_scale=32", "data.test_crop_size=32", "data.num_frames=4", "data.sampling_rate=3"]


def test_check_finds_each_problem_and_training_excludes_them(tmp_path, capsys, caplog):
    root = tmp_path / "hostile"
    kinds = make_hostile_root(root)
    out = tmp_path / "check"
    args = ["data=kinetics400", f"data.root={root}", *SMALL, "--workers", "2", "--out", str(out)]
    assert check([*args, "--exclude", "unreadable", "empty", "too_short"]) == 1
    printed = capsys.readouterr().out
    assert f"{sum(map(len, kinds.values()))} videos, 11 with problems" in printed
    assert "train without them: python train.py data=kinetics400" in printed
    report = json.loads((out / "check_report.json").read_text())
    assert report["counts"] == {"unreadable": 7, "empty": 1, "too_short": 1, "odd_resolution": 1,
                                "variable_frame_rate": 1, "length_mismatch": 0}
    found = {(p["path"], p["kind"]) for p in report["problems"]}
    assert {path for path, kind in found if kind in ("unreadable", "empty")} == set(kinds["broken"])
    assert ("videos/zero_byte.mp4", "empty") in found and ("videos/one_frame.mp4", "too_short") in found
    assert ("videos/tiny_2x2.mp4", "odd_resolution") in found
    assert ("videos/vfr.mp4", "variable_frame_rate") in found
    assert all(p["splits"] == ["train", "val", "test"] for p in report["problems"])
    lines = (out / "exclude.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted([*kinds["broken"], "videos/one_frame.mp4"])
    reasons = dict(line.split("\t") for line in lines)
    assert reasons["videos/missing.mp4"] == "unreadable: missing file"
    assert all(reasons[f"videos/{name}"].split(": ", 1)[1].startswith(why) for name, why in BROKEN.items())

    listed = len(build_dataset(data_cfg(root), "train").records)
    with caplog.at_level(logging.INFO, logger="nlvideo.data.dataset"):
        ds = build_dataset(data_cfg(root, exclude_list=str(out / "exclude.txt")), "train")
    assert ds.num_videos == listed - 9
    assert not {r.path for r in ds.records} & {str(root / p) for p in kinds["broken"]}
    assert [r.getMessage() for r in caplog.records if "exclude_list" in r.getMessage()] == [
        f"train: 9 of {listed} videos left out by data.exclude_list={out / 'exclude.txt'}"]


def test_errors_are_one_line(tmp_path, capsys):
    assert check(["data=kinetics400", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: data.root is required for data=kinetics400: "
                                       "set data.root=/path/to/videos\n")
    assert check(["data=kinetics", f"data.root={tmp_path}", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: In 'config': Could not find 'data/kinetics'")
    assert check(["data=kinetics400", f"data.root={tmp_path}", "--out", str(tmp_path)]) == 2  # no train.csv
    assert capsys.readouterr().err.startswith("error: annotation list not found:")
    with pytest.raises(ValueError, match=r"^data.exclude_list=5 must be a file"):
        check_data_config(data_cfg(tmp_path, exclude_list=5))
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 1\n")
    with pytest.raises(ValueError, match="data.exclude_list not found"):
        build_dataset(data_cfg(tmp_path, exclude_list=str(tmp_path / "nope.txt")), "train")
    (tmp_path / "all.txt").write_text("# every video\na.mp4\n\n" + str(Path(tmp_path / "b.mp4")) + "\twhy\n")
    with pytest.raises(ValueError, match="leaves no train video"):
        build_dataset(data_cfg(tmp_path, exclude_list=str(tmp_path / "all.txt")), "train")
