"""Hostile annotation files: each is either read correctly or rejected at start-up with an error
naming ``file:line`` -- never a wrong label silently. (Malformed Kinetics lines, out-of-range labels,
unknown Kinetics class names and malformed Charades actions are in tests/test_data_annotations.py.)
"""

from __future__ import annotations

import math
import random
from pathlib import Path

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


def charades_cfg(synthetic_cfg):
    """``configs/data/synthetic_charades.yaml`` on the tests' small synthetic dataset."""
    charades = OmegaConf.load(REPO / "configs" / "data" / "synthetic_charades.yaml")
    cfg = OmegaConf.merge(synthetic_cfg, charades)
    cfg.root, cfg.generate = synthetic_cfg.root, synthetic_cfg.generate
    cfg.pop("defaults", None)
    return cfg


def test_negative_and_nan_times_never_give_wrong_clip_labels(synthetic_cfg, tmp_path):
    """Through the dataset: a video whose action times are unusable gets all its actions as clip labels
    (the clip cannot be placed in time), a video with usable times gets the overlapping ones."""
    cfg = charades_cfg(synthetic_cfg)
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


# --- label kinds: one kind per list, one class mapping for every split (issue 13) -------------------


def test_one_decimal_label_in_an_integer_list_is_an_error_naming_its_line(tmp_path):
    """Before: '11.0' flipped the whole list to class names sorted as text (2 -> class 4)."""
    f = write(tmp_path / "train.csv", "".join(f"v{i}.mp4 {i}\n" for i in range(11)) + "v11.mp4 11.0\n")
    with pytest.raises(ValueError, match=rf"^{f}:12: label '11.0' is a decimal number, but this list's "
                                         rf"labels are integers \(e.g. '0' at {f}:1\)"):
        A.read_kinetics_list(f, tmp_path, None)


def test_a_class_name_in_an_integer_list_is_an_error_naming_its_line(tmp_path):
    f = write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 cat\nc.mp4 1\n")
    with pytest.raises(ValueError, match=rf"^{f}:2: label 'cat' is a class name, but this list's labels "
                                         "are integers"):
        A.read_kinetics_list(f, tmp_path, None)


def test_all_decimal_labels_as_pandas_writes_them_are_class_indices(tmp_path):
    """A pandas integer column holding a NaN is written as 2.0, 10.0: read as 2, 10 for the whole list,
    with the same mapping as an integer val list."""
    train = write(tmp_path / "train.csv", "".join(f"v{i}.mp4 {i}.0\n" for i in (2, 10, 0, 1)))
    val = write(tmp_path / "val.csv", "w2.mp4 2\nw10.mp4 10\n")
    records, names = A.read_kinetics_list(train, tmp_path, None)
    assert [r.label for r in records] == [2, 10, 0, 1] and names == [str(i) for i in range(11)]
    val_records, val_names = A.read_kinetics_list(val, tmp_path, None, train_list_file=train)
    assert [r.label for r in val_records] == [2, 10] and val_names == names
    half = write(tmp_path / "half.csv", "a.mp4 1.0\nb.mp4 1.5\n")
    with pytest.raises(ValueError, match=rf"^{half}:2: label '1.5' is not a whole number"):
        A.read_kinetics_list(half, tmp_path, None)


@pytest.mark.parametrize("header", ["path label", "video_path\tlabel_id", "filename class"])
def test_header_row_is_recognised(tmp_path, header):
    f = write(tmp_path / "train.csv", f"{header}\na.mp4 2\nb.mp4 10\n")
    records, names = A.read_kinetics_list(f, tmp_path, 11)
    assert [(r.label, r.source) for r in records] == [(2, f"{f}:2"), (10, f"{f}:3")]
    only = write(tmp_path / "only.csv", "path label\n")
    with pytest.raises(ValueError, match=rf"^{only}:2: no videos listed"):
        A.read_kinetics_list(only, tmp_path, 11)


def test_splits_share_the_training_lists_class_mapping(tmp_path):
    """Without data.num_classes and class file, the classes are the training list's, whatever labels the
    val list happens to use; a val list of another label kind cannot be matched and is refused."""
    train = write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 9\n")
    val = write(tmp_path / "val.csv", "c.mp4 3\n")
    _, names = A.read_kinetics_list(val, tmp_path, None, train_list_file=train)
    assert names == [str(i) for i in range(10)]
    beyond = write(tmp_path / "beyond.csv", "c.mp4 12\n")
    with pytest.raises(ValueError, match=rf"^{beyond}:1: label 12 out of range"):
        A.read_kinetics_list(beyond, tmp_path, None, train_list_file=train)
    named = write(tmp_path / "named.csv", "c.mp4 cat\n")
    with pytest.raises(ValueError, match=rf"^{named}:1: this list's labels are class names but the training "
                                         rf"list {train} uses integers"):
        A.read_kinetics_list(named, tmp_path, None, train_list_file=train)
    write(tmp_path / "classes.txt", "".join(f"c{i}\n" for i in range(10)))  # a class file maps both kinds
    records, names = A.read_kinetics_list(write(tmp_path / "n2.csv", "c.mp4 c3\n"), tmp_path, None,
                                          train_list_file=train)
    assert records[0].label == 3 and names[3] == "c3"


@pytest.mark.parametrize("name", ["train.csv", "classes.txt", "c.csv"])
def test_file_that_is_not_utf8_is_named_with_its_line(tmp_path, name):
    (tmp_path / "ok.csv").write_text("a.mp4 0\n")
    text = {"train.csv": b"a.mp4 0\nb\xe9.mp4 1\n", "classes.txt": b"cat\ndog\xff\n",
            "c.csv": b"id,actions\nA,c000 0 1\nB\xe9,\n"}[name]
    f = tmp_path / name
    f.write_bytes(text)
    line = 2 if name != "c.csv" else 3
    message = rf"^{f}:{line}: not UTF-8 text \(byte 0x(e9|ff)\); save the file as UTF-8"
    with pytest.raises(ValueError, match=message):
        if name == "train.csv":
            A.read_kinetics_list(f, tmp_path, 2)
        elif name == "classes.txt":
            A.read_kinetics_list(tmp_path / "ok.csv", tmp_path, 2, class_file=f)
        else:
            A.read_charades_csv(f, tmp_path, 157)


# --- Kinetics folders -------------------------------------------------------------------------------


def test_kinetics_folder_skips_hidden_refuses_empty_classes_and_keeps_broken_links(tmp_path, make_video):
    """Before: .ipynb_checkpoints became a class, an empty folder a class without videos, and a broken
    symlink was dropped silently. Now hidden entries are skipped, an empty training class folder is an
    error naming it, and a broken link is listed so that it is reported as unreadable (and counted)."""
    make_video(tmp_path / "train" / "cat" / "a.mp4", num_frames=8)
    make_video(tmp_path / "train" / "dog" / "b.mp4", num_frames=8)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / "cat" / "._a.mp4").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (tmp_path / "train" / "dog" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    records, names = A.read_kinetics_folder(tmp_path / "train", 2)
    assert names == ["cat", "dog"]
    assert [(r.label, Path(r.path).name) for r in records] == [(0, "a.mp4"), (1, "b.mp4"), (1, "gone.mp4")]
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'train' / 'empty'}: class folder without video "
                                         "files"):
        A.read_kinetics_folder(tmp_path / "train", None)
    (tmp_path / "train" / "empty").rmdir()
    cfg = OmegaConf.load(REPO / "configs" / "data" / "kinetics400.yaml")
    cfg.update(root=str(tmp_path), format="kinetics_folder", num_classes=2, test_dir="train", num_frames=4,
               test={"num_clips": 1, "num_crops": 1}, test_scale=32, test_crop_size=32)
    ds = build_dataset(cfg, "test")
    ds.report_failures = False
    item = ds[2]
    gone = str(tmp_path / "train" / "dog" / "gone.mp4")
    assert not item["valid"] and item["failures"] == [(gone, "broken symbolic link")]


# --- Charades: videos without actions, actions outside the video -----------------------------------


def test_charades_summary_counts_videos_without_actions_and_actions_outside_the_video(tmp_path):
    f = write(tmp_path / "c.csv", "id,actions,length\n"
              "A,c001 1 2;c002 3.5 5.5,5.0\n"   # c002 ends after the video's 5 s
              "B,,3.0\n"                        # no action
              "C,c003 6 7,5.0\n"                # starts after the end
              "D,c004 -1 2,4.0\n"               # unusable times
              "E,c005 0 9,\n")                  # no length: nothing to compare
    summary = A.charades_summary(A.read_charades_csv(f, tmp_path, 157), f)
    assert summary == (f"{f}: 5 videos, 1 without actions; 5 actions, 2 lying (partly) after the end of "
                       "their video (first at " f"{f}:2), 1 with unusable times (first at {f}:5)")


def test_charades_summary_is_logged_when_the_dataset_is_built(synthetic_cfg, caplog):
    cfg = charades_cfg(synthetic_cfg)
    with caplog.at_level("INFO", logger="nlvideo.data"):
        build_dataset(cfg, "val")
    csv_file = Path(cfg.root) / cfg.val_list
    assert f"val: {csv_file}: 8 videos, " in caplog.text
