import json
from pathlib import Path

import pytest

from nlvideo.data import annotations as A


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_kinetics_int_labels_space_and_tab(tmp_path):
    f = write(tmp_path / "train.csv", "a/x.mp4 0\n\n# comment\nb/y z.mp4\t2\n/abs/c.mp4 1\n")
    records, names = A.read_kinetics_list(f, tmp_path, num_classes=3)
    assert names == ["0", "1", "2"]
    assert [r.label for r in records] == [0, 2, 1]
    assert records[0].path == str(tmp_path / "a/x.mp4")
    assert records[1].path == str(tmp_path / "b/y z.mp4")
    assert records[2].path == "/abs/c.mp4"
    assert records[1].source == f"{f}:4"


def test_kinetics_int_labels_with_classes_txt_and_json(tmp_path):
    f = write(tmp_path / "val.csv", "x.mp4 1\n")
    write(tmp_path / "classes.txt", "walking\nair drumming\n")
    records, names = A.read_kinetics_list(f, tmp_path, num_classes=2)
    assert names == ["walking", "air drumming"] and records[0].label == 1
    cj = write(tmp_path / "ids" / "classids.json", json.dumps({"b": 1, "a": 0}))
    _, names = A.read_kinetics_list(f, tmp_path, num_classes=2, class_file=cj)
    assert names == ["a", "b"]


def test_kinetics_name_labels_sorted_from_train(tmp_path):
    train = write(tmp_path / "train.csv", "1.mp4 zebra\n2.mp4\tair drumming\n3.mp4 apple\n")
    val = write(tmp_path / "val.csv", "4.mp4 apple\n5.mp4\tair drumming\n")
    records, names = A.read_kinetics_list(val, tmp_path, 3, train_list_file=train)
    assert names == ["air drumming", "apple", "zebra"]
    assert [r.label for r in records] == [1, 0]


def test_kinetics_unknown_class_names_file_and_line(tmp_path):
    train = write(tmp_path / "train.csv", "1.mp4 cat\n2.mp4 dog\n")
    val = write(tmp_path / "val.csv", "3.mp4 cat\n4.mp4 cow\n")
    with pytest.raises(ValueError, match=rf"{val}:2: unknown class name 'cow'"):
        A.read_kinetics_list(val, tmp_path, 2, train_list_file=train)


def test_kinetics_malformed_line(tmp_path):
    f = write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 1 extra\n")
    with pytest.raises(ValueError, match=rf"{f}:2: expected '<path> <label>'"):
        A.read_kinetics_list(f, tmp_path, 2)
    f = write(tmp_path / "t2.csv", "a.mp4\n")
    with pytest.raises(ValueError, match=rf"{f}:1: expected"):
        A.read_kinetics_list(f, tmp_path, 2)


def test_kinetics_label_out_of_range_and_class_count(tmp_path):
    f = write(tmp_path / "train.csv", "a.mp4 0\nb.mp4 5\n")
    with pytest.raises(ValueError, match=rf"{f}:2: label 5 out of range"):
        A.read_kinetics_list(f, tmp_path, 3)
    g = write(tmp_path / "g.csv", "a.mp4 cat\n")
    with pytest.raises(ValueError, match="data.num_classes=400"):
        A.read_kinetics_list(g, tmp_path, 400)


def test_missing_list_file(tmp_path):
    with pytest.raises(ValueError, match="annotation list not found"):
        A.read_kinetics_list(tmp_path / "nope.csv", tmp_path, 2)


def test_kinetics_folder(tmp_path):
    for split, cls, name in [("train", "b", "1.mp4"), ("train", "a", "2.avi"), ("val", "b", "3.mp4")]:
        write(tmp_path / split / cls / name, "x")
    write(tmp_path / "train" / "a" / "notes.txt", "ignored")
    recs, names = A.read_kinetics_folder(tmp_path / "train", 2)
    assert names == ["a", "b"]
    assert [(r.label, Path(r.path).name) for r in recs] == [(0, "2.avi"), (1, "1.mp4")]
    recs, _ = A.read_kinetics_folder(tmp_path / "val", 2, names)
    assert [r.label for r in recs] == [1]
    write(tmp_path / "val" / "zzz" / "4.mp4", "x")
    with pytest.raises(ValueError, match="unknown class folder 'zzz'"):
        A.read_kinetics_folder(tmp_path / "val", 2, names)


CHARADES = """id,subject,scene,script,actions,length
46GP8,HR43,Kitchen,"A person cooks, then eats.",c092 11.90 21.20;c147 0.00 12.60,24.83
N11GT,0KZ7,Stairs,"Walks, sits",,12.00
BAD01,X,Y,"times",c001 5.00 2.00;c002 1.00 3.00,10.0
"""


def test_charades_parsing(tmp_path):
    f = write(tmp_path / "Charades_v1_train.csv", CHARADES)
    recs = A.read_charades_csv(f, tmp_path / "vids", 157)
    assert [r.path for r in recs] == [
        str(tmp_path / "vids" / f"{v}.mp4") for v in ("46GP8", "N11GT", "BAD01")
    ]
    assert recs[0].actions == [A.Action(92, 11.9, 21.2), A.Action(147, 0.0, 12.6)]
    assert recs[0].length == pytest.approx(24.83)
    assert recs[0].video_labels == [92, 147] and recs[1].video_labels == []
    # clip labels: actions overlapping the clip's time span
    assert recs[0].labels_in_span(0.0, 5.0) == [147]
    assert recs[0].labels_in_span(12.0, 15.0) == [92, 147]
    assert recs[0].labels_in_span(13.0, 15.0) == [92]
    assert recs[0].labels_in_span(22.0, 24.0) == []
    # inverted times on one action: fall back to all the video's actions
    assert recs[2].actions[0].start is None and not recs[2].timing_usable
    assert recs[2].labels_in_span(0.0, 0.5) == [1, 2]


def test_charades_nan_and_negative_times_fall_back(tmp_path):
    f = write(tmp_path / "c.csv", "id,actions\nA,c003 nan 4.0;c004 1.0 2.0\nB,c005 -1.0 2.0\n")
    recs = A.read_charades_csv(f, tmp_path, 10)
    assert recs[0].labels_in_span(1.5, 1.6) == [3, 4]
    assert recs[1].labels_in_span(5.0, 6.0) == [5]


@pytest.mark.parametrize(
    "line, message",
    [
        ("A,c200 1.0 2.0", r":2: unknown class 'c200'; expected c000..c156"),
        ("A,x001 1.0 2.0", r":2: action 'x001 1.0 2.0': class 'x001' is not of the form cNNN"),
        ("A,c001 1.0", r":2: action 'c001 1.0': expected 'cNNN <start_s> <end_s>'"),
        ("A,c001 a b", r":2: action 'c001 a b': start/end must be numbers"),
    ],
)
def test_charades_malformed(tmp_path, line, message):
    f = write(tmp_path / "c.csv", f"id,actions\n{line}\n")
    with pytest.raises(ValueError, match=f"{f}{message}"):
        A.read_charades_csv(f, tmp_path, 157)


def test_charades_header_and_class_names(tmp_path):
    f = write(tmp_path / "c.csv", "vid,labels\nA,c001 1 2\n")
    with pytest.raises(ValueError, match=rf"{f}:1: header lacks column\(s\) \['actions', 'id'\]"):
        A.read_charades_csv(f, tmp_path, 157)
    names = A.charades_class_names(3, write(tmp_path / "cls.txt", "c000 Holding some clothes\nc002 Run\n"))
    assert names == ["c000 Holding some clothes", "c001", "c002 Run"]
