"""``train.py --help`` / ``eval.py -h``: what the script does, its config groups and main keys (it
printed Hydra's stock text, which names neither), without composing a config or creating a run dir."""

from __future__ import annotations

import pytest

from tests.test_train_run import REPO, run_app


@pytest.mark.parametrize(("script", "flag", "expected"), [
    ("train.py", "--help", "Train a video classifier"),
    ("eval.py", "-h", "checkpoint=PATH             required"),
    ("predict.py", "--help", "video=FILE|DIR|[a.mp4,b.mp4]"),
])
def test_help_describes_the_script_groups_and_keys(script, flag, expected):
    before = set((REPO / "outputs").glob("*")) if (REPO / "outputs").exists() else set()
    r = run_app(script, flag, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert expected in r.stdout
    assert "  model       c2d, c2d_nl1," in r.stdout and "device=auto|cpu|cuda" in r.stdout
    after = set((REPO / "outputs").glob("*")) if (REPO / "outputs").exists() else set()
    assert after == before  # no Hydra run dir was made


def test_export_help_lists_its_main_keys():
    r = run_app("scripts/export.py", "--help", timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    keys = r.stdout.split("Main keys (key=value; every key: --cfg job):\n", 1)[1].split("\n\n", 1)[0]
    for key in ("checkpoint=PATH", "format=onnx|torchscript|exported_program", "out=FILE", "video=FILE",
                "dynamic=true|false"):
        assert key in keys, r.stdout
    assert "Config groups" not in r.stdout  # configs/export.yaml takes none


def test_predict_help_lists_only_the_groups_it_takes():
    r = run_app("predict.py", "--help", timeout=60)
    groups = r.stdout.split("Config groups (name=choice):\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in groups.splitlines()] == ["clip", "data", "model"]
