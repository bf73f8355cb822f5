"""eval.py against the checkpoint's classes, unreadable test sets and unreadable checkpoints (issue 13).

Before: output *i* was scored against the test list's class *i* whatever names either had (the same
model and videos gave other predictions with a reordered class file), a test where no video could be
read exited 0 with no ``top1`` in metrics.json, and a garbage ``checkpoint=`` ended in a traceback.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from nlvideo.data.annotations import output_order
from nlvideo.engine.config import ConfigError
from nlvideo.engine.tester import load_checkpoint_for_testing
from tests.test_train_run import run_app


@pytest.fixture
def checkpoint(trained_checkpoint) -> Path:
    """conftest's train.py checkpoint (the tests read it, eval.py writes in their own folders)."""
    return trained_checkpoint


def predictions(out: Path) -> list[dict[str, str]]:
    with open(out / "predictions.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_outputs_are_mapped_by_class_name_when_the_test_list_orders_classes_differently(
        checkpoint, synthetic_root, tmp_path):
    """The same videos listed by name, with the class file in reverse order: the same predictions."""
    r = run_app("eval.py", f"checkpoint={checkpoint}", f"hydra.run.dir={tmp_path / 'plain'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    names = (synthetic_root / "classes.txt").read_text().split()
    (tmp_path / "reversed.txt").write_text("".join(f"{n}\n" for n in reversed(names)))
    rows = [line.split() for line in (synthetic_root / "val.csv").read_text().splitlines()]
    (tmp_path / "by_name.csv").write_text("".join(f"{path} {names[int(label)]}\n" for path, label in rows))
    r = run_app("eval.py", f"checkpoint={checkpoint}", f"data.class_file={tmp_path / 'reversed.txt'}",
                f"data.test_list={tmp_path / 'by_name.csv'}", f"hydra.run.dir={tmp_path / 'reordered'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / "reordered" / "eval.log").read_text()
    assert "outputs mapped to the test data's classes by name" in log
    plain, reordered = predictions(tmp_path / "plain"), predictions(tmp_path / "reordered")
    assert len(plain) == 8 and plain == reordered


def test_a_test_where_no_video_can_be_read_fails_in_one_line(checkpoint, synthetic_root, tmp_path):
    (tmp_path / "gone.csv").write_text("".join(f"videos/gone_{i}.mp4 {i % 4}\n" for i in range(3)))
    out = tmp_path / "eval"
    r = run_app("eval.py", f"checkpoint={checkpoint}", f"data.test_list={tmp_path / 'gone.csv'}",
                f"hydra.run.dir={out}")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        "error: no test video could be read: all 3 listed videos are unreadable (each is named in the log); "
        "nothing was scored"]
    assert not (out / "metrics.json").exists()


def test_garbage_checkpoint_is_refused_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    r = run_app("eval.py", f"checkpoint={garbage}", f"hydra.run.dir={tmp_path / 'eval'}", timeout=120)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint={garbage}: the file is truncated or corrupt (")


def test_unreadable_and_foreign_checkpoints_are_config_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 3}, good)
    assert load_checkpoint_for_testing(good)["iteration"] == 3
    half = tmp_path / "half.pt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"^checkpoint={half}: the file is truncated or corrupt \("):
        load_checkpoint_for_testing(half)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match=rf"^checkpoint={foreign} holds no model weights \(no 'model' key"):
        load_checkpoint_for_testing(foreign)
    with pytest.raises(ConfigError, match=rf"^checkpoint={tmp_path / 'none.pt'} does not exist$"):
        load_checkpoint_for_testing(tmp_path / "none.pt")


def test_output_order_maps_by_name_and_refuses_other_classes():
    assert output_order(["a", "b", "c"], ["a", "b", "c"]) is None
    assert output_order(None, ["a", "b"]) is None  # a checkpoint from before class names were stored
    assert output_order(["a", "b", "c"], ["c", "a", "b"]) == [2, 0, 1]
    assert output_order(["0", "1", "2"], ["a", "b", "c"]) is None  # indices only: counts are compared
    with pytest.raises(ValueError, match=r"^the model's 3 classes and the data's 3 differ: only the model "
                                         r"has \['c'\], only the data has \['d'\]$"):
        output_order(["a", "b", "c"], ["a", "b", "d"])
    with pytest.raises(ValueError, match=r"^the model has 400 classes, the data 2"):
        output_order([str(i) for i in range(400)], ["cat", "dog"])
