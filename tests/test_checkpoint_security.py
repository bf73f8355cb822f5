"""Reading a checkpoint runs no code: every command reads checkpoints with ``weights_only=True``, the
run's own included, and a file that needs full unpickling is refused in one line naming the opt-in for
a trusted file (``NLVIDEO_TRUST_CHECKPOINT``). The checkpoints train.py writes need nothing more."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train_run import REPO, app_env, tiny_overrides


class ShellPayload:
    """What a hostile checkpoint carries: unpickling it runs a shell command (here: creates a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_copy(checkpoint: Path, dest: Path, marker: Path) -> Path:
    """A real train.py checkpoint with the payload among its entries, as someone could share it."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "config": {**state["config"], "note": ShellPayload(marker)}}, dest)
    return dest


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or app_env(), text=True,
                          capture_output=True, timeout=240)


def test_train_py_checkpoints_load_with_weights_only_and_no_allowed_globals(trained_checkpoint):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(trained_checkpoint) == []
    state = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}


COMMANDS = {  # how each command is pointed at the file F (D: a fresh run dir)
    "predict": lambda f, d, data: ["predict.py", f"checkpoint={f}", f"video={data}/videos"],
    "eval": lambda f, d, data: ["eval.py", f"checkpoint={f}", f"hydra.run.dir={d}"],
    "export": lambda f, d, data: ["scripts/export.py", f"checkpoint={f}", f"out={d}.onnx"],
    "train resume=PATH": lambda f, d, data: ["train.py", *tiny_overrides(data), f"trainer.resume={f}",
                                             f"hydra.run.dir={d}"],
    "train init_weights": lambda f, d, data: ["train.py", *tiny_overrides(data), f"trainer.init_weights={f}",
                                              f"hydra.run.dir={d}"],
    "visualize": lambda f, d, data: ["-m", "nlvideo.visualize", "--checkpoint", str(f), "--out", f"{d}.png"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_checkpoint_carrying_a_shell_command_runs_nothing(command, trained_checkpoint, synthetic_root,
                                                            tmp_path):
    marker = tmp_path / "payload-ran"
    hostile = hostile_copy(trained_checkpoint, tmp_path / "shared" / "checkpoint.pt", marker)
    r = run(COMMANDS[command](hostile, tmp_path / "run", synthetic_root))
    assert not marker.exists()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and line.endswith(
        f"{hostile} needs full unpickling (it holds posix.system), which can run code: if you trust this "
        f"file, rerun with NLVIDEO_TRUST_CHECKPOINT={hostile}")


def test_the_runs_own_newest_checkpoint_is_read_safely_too(trained_checkpoint, synthetic_root, tmp_path):
    """resume=auto: a hostile file dropped into the run dir is refused, not run and not set aside."""
    marker, run_dir = tmp_path / "payload-ran", tmp_path / "run"
    hostile = hostile_copy(trained_checkpoint, run_dir / "checkpoints" / "checkpoint_000000002.pt", marker)
    r = run(["train.py", *tiny_overrides(synthetic_root), "model=c2d_nl1", "trainer.resume=auto",
             f"hydra.run.dir={run_dir}"])
    assert not marker.exists() and hostile.is_file()
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "needs full unpickling" in r.stderr.strip().splitlines()[-1]


def test_a_trusted_file_is_read_in_full_when_named(trained_checkpoint, synthetic_root, tmp_path):
    """An older checkpoint holding a Python object (here argparse's Namespace) is refused, then read
    with NLVIDEO_TRUST_CHECKPOINT naming it."""
    old = tmp_path / "old.pt"
    state = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=0.1)}, old)
    video = next((synthetic_root / "videos").rglob("*.mp4"))
    args = ["predict.py", f"checkpoint={old}", f"video={video}", "views=1"]
    refused = run(args)
    assert refused.returncode == 2 and "it holds argparse.Namespace" in refused.stderr
    trusted = run(args, dict(app_env(), NLVIDEO_TRUST_CHECKPOINT=str(old)))
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert str(video) in trusted.stdout
