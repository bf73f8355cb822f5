"""Hostile annotation files: each is either read correctly or rejected at start-up with an error
naming ``file:line`` -- never a wrong label silently. (Malformed Kinetics lines, out-of-range labels,
unknown Kinetics class names and malformed Charades actions are in tests/test_data_annotations.py.)
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from omegaconf import OmegaConf

from nlvideo.data import annotations as A
from nlvideo.data import build_dataset
from tests.conftest import REPO
from tests.test_train_run import run_app

BOM = "\ufeff"


def write(path, text: str, newline: str = "\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", BOM])
def test_empty_kinetics_list_names_the_file(tmp_path, text):
    f = write(tmp_path / "train.csv", text)
    with pytest.raises(ValueError, match=rf"^{f}:1: no videos listed"):
        A.read_kinetics_list(f, tmp_path, 2)


def test_empty_charades_csv_names_the_file(tmp_path):
    f = write(tmp_path / "c.csv", "")
    with pytest.raises(ValueError, match=rf"^{f}:1: header lacks column"):
        A.read_charades_csv(f, tmp_path, 157)
    g = write(tmp_path / "d.csv", "id,actions\n")
    with pytest.raises(ValueError, match=rf"^{g}:2: no videos listed"):
        A.read_charades_csv(g, tmp_path, 157)


@pytest.mark.parametrize("row", ["B,c001 1 2,extra", "B"])
def test_charades_wrong_column_count(tmp_path, row):
    f = write(tmp_path / "c.csv", f"id,actions\nA,c000 0 1\n{row}\n")
    with pytest.raises(ValueError, match=rf"^{f}:3: wrong number of fields; expected 2 columns"):
        A.read_charades_csv(f, tmp_path, 157)


def test_unknown_class_name_against_class_file(tmp_path):
    write(tmp_path / "classes.txt", "cat\ndog\n")
    f = write(tmp_path / "val.csv", "a.mp4 dog\nb.mp4 Dog\n")
    with pytest.raises(ValueError, match=rf"^{f}:2: unknown class name 'Dog'"):
        A.read_kinetics_list(f, tmp_path, 2)


def test_duplicate_kinetics_video_names_both_lines(tmp_path):
    f = write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 1\n./a.mp4 1\n")  # same file, other label
    with pytest.raises(ValueError, match=rf"^{f}:3: video './a.mp4' is listed again \(first at {f}:1\)"):
        A.read_kinetics_list(f, tmp_path, 2)
    g = write(tmp_path / "val.csv", "a.mp4 0\nb.mp4 1\na.mp4 0\n")  # exact repeat
    with pytest.raises(ValueError, match=rf"^{g}:3: video 'a.mp4' is listed again \(first at {g}:1\)"):
        A.read_kinetics_list(g, tmp_path, 2)


def test_duplicate_charades_id_names_both_lines(tmp_path):
    f = write(tmp_path / "c.csv", 'id,script,actions\nA,"x, y",c001 1 2\nB,z,\nA,w,c002 0 1\n')
    with pytest.raises(ValueError, match=rf"^{f}:4: id 'A' is listed again \(first at {f}:2\)"):
        A.read_charades_csv(f, tmp_path, 157)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", ["", BOM])
def test_bom_and_crlf_kinetics_files_read_exactly(tmp_path, bom, newline):
    write(tmp_path / "classes.txt", f"{bom}walking\nair drumming\n", newline)
    f = write(tmp_path / "train.csv", f"{bom}v/ä b.mp4\tair drumming\nv/c.mp4\twalking\n", newline)
    records, names = A.read_kinetics_list(f, tmp_path, 2)
    assert names == ["walking", "air drumming"]
    assert [(r.path, r.label) for r in records] == [(str(tmp_path / "v/ä b.mp4"), 1),
                                                   (str(tmp_path / "v/c.mp4"), 0)]
    g = write(tmp_path / "ids.csv", f"{bom}x.mp4 1\ny.mp4 0\n", newline)
    records, _ = A.read_kinetics_list(g, tmp_path, 2)
    assert [(r.path, r.label) for r in records] == [(str(tmp_path / "x.mp4"), 1),
                                                   (str(tmp_path / "y.mp4"), 0)]
    j = write(tmp_path / "classids.json", f'{bom}{{"b": 1, "a": 0}}', newline)
    assert A.read_class_file(j) == ["a", "b"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", ["", BOM])
def test_bom_and_crlf_charades_files_read_exactly(tmp_path, bom, newline):
    f = write(tmp_path / "c.csv", f'{bom}id,script,actions,length\nA,"x, y",c001 1.5 2.5;c003 0 1,4.0\n'
              "B,z,,2\n", newline)
    recs = A.read_charades_csv(f, tmp_path / "v", 157)
    assert [r.path for r in recs] == [str(tmp_path / "v" / "A.mp4"), str(tmp_path / "v" / "B.mp4")]
    assert recs[0].actions == [A.Action(1, 1.5, 2.5), A.Action(3, 0.0, 1.0)] and recs[0].length == 4.0
    assert recs[1].video_labels == [] and recs[1].source == f"{f}:3"
    c = write(tmp_path / "cls.txt", f"{bom}c000 Holding\nc001 Run\n", newline)
    assert A.charades_class_names(2, c) == ["c000 Holding", "c001 Run"]


def test_negative_and_nan_times_never_give_wrong_clip_labels(synthetic_cfg, tmp_path):
    """Through the dataset: a video whose action times are unusable gets all its actions as clip labels
    (the clip cannot be placed in time), a video with usable times gets the overlapping ones."""
    charades = OmegaConf.load(REPO / "configs" / "data" / "synthetic_charades.yaml")
    cfg = OmegaConf.merge(synthetic_cfg, charades)
    cfg.root, cfg.generate = synthetic_cfg.root, synthetic_cfg.generate
    cfg.pop("defaults", None)
    rows = ["id,actions,length",
            "train_00000,c000 0.00 1.17;c001 1.83 3.00,3.00",   # usable: a clip of frames 0..12 -> c000
            "train_00001,c000 nan 1.17;c001 1.83 3.00,3.00",    # NaN start: all labels
            "train_00002,c000 -0.50 1.17;c002 1.83 3.00,3.00",  # negative start: all labels
            "train_00003,c000 inf 1.17;c002 1.83 -3.00,3.00"]   # inf / inverted: all labels
    write(tmp_path / "times.csv", "\n".join(rows) + "\n")
    cfg.train_list = str(tmp_path / "times.csv")
    cfg.num_frames, cfg.sampling_rate = 4, 4
    ds = build_dataset(cfg, "train")
    seed = next(s for s in range(100) if random.Random(s).randint(0, 64 - 13) <= 10)  # clip in [0, 1] s
    labels = [ds[(i, seed)]["label"] for i in range(4)]
    assert labels[0].tolist() == [1, 0, 0, 0, 0]  # starts before 11/24 s, ends before 1.83 s
    assert labels[1].tolist() == [1, 1, 0, 0, 0]
    assert labels[2].tolist() == labels[3].tolist() == [1, 0, 1, 0, 0]
    assert all(math.isfinite(float(x.sum())) and x.dtype == torch.float32 for x in labels)


def test_annotation_error_stops_train_py_in_one_line_before_training(tmp_path):
    root = tmp_path / "k"
    write(root / "train.csv", "a.mp4 0\nb.mp4 1\na.mp4 1\n")
    r = run_app("train.py", "data=kinetics400", f"data.root={root}", "data.num_classes=2", "model.width=8",
                f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines == [f"error: {root / 'train.csv'}:3: video 'a.mp4' is listed again "
                     f"(first at {root / 'train.csv'}:1); list each video once"]
    assert not (tmp_path / "run" / "checkpoints").exists()
