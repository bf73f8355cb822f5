"""A start refused before any work leaves nothing behind (train.py/eval.py subprocesses run from a
scratch working directory, as a user would): no run dir holding only ``.hydra/``, a lock file and an
empty log; an existing run dir byte-identical; a read-only run dir one line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_run import REPO, app_env, tiny_overrides


def run(cwd: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=cwd, env=app_env(),
                          text=True, capture_output=True, timeout=240)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: a file's bytes, None for a directory."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def assert_refused(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [f"error: {message}"]


@pytest.mark.parametrize(("script", "overrides", "message"), [
    ("train.py", ["data=kinetics400"], "data.root is required for data=kinetics400: pass "
                                       "data.root=/path/to/kinetics400"),
    ("train.py", ["trainer.epochs=abc"], "trainer.epochs='abc' must be an integer >= 1"),
    ("eval.py", [], "checkpoint is required: eval.py checkpoint=/path/to/checkpoint_XXXXXXXXX.pt (or "
                    "model.pretrained=FILE to test published weights)"),
])
def test_a_refused_start_leaves_no_run_dir(tmp_path, script, overrides, message):
    """Each left outputs/<job>/c2d/<time>/ with .hydra/, .nlvideo.lock and an empty log."""
    (tmp_path / "outputs" / "train" / "earlier").mkdir(parents=True)  # existing parents stay
    assert_refused(run(tmp_path, script, *overrides), message)
    assert tree(tmp_path) == {"outputs": None, "outputs/train": None, "outputs/train/earlier": None}
    if script == "train.py" and overrides == ["data=kinetics400"]:  # a named dir: its new parents go too
        (tmp_path / "mine").mkdir()  # an empty directory of the user's stays
        assert_refused(run(tmp_path, script, *overrides, "hydra.run.dir=mine/a/b"), message)
        assert tree(tmp_path) == {"mine": None, "outputs": None, "outputs/train": None,
                                  "outputs/train/earlier": None}


def test_a_refused_resume_leaves_the_run_dir_byte_identical(synthetic_root, tmp_path):
    """Hydra replaced the run's .hydra/config.yaml and overrides.yaml with the refused command's, and
    the log grew, although the run was not resumed."""
    run_dir = tmp_path / "run"
    base = [*tiny_overrides(synthetic_root), "trainer.eval_period=0", "trainer.max_iters=1",
            f"hydra.run.dir={run_dir}"]
    r = run(tmp_path, "train.py", *base)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    before = tree(run_dir)
    r = run(tmp_path, "train.py", *base, "model.dropout=0.3")
    assert r.returncode == 2
    assert "was trained with another model config (model.dropout: 0.5 -> 0.3)" in r.stderr
    assert tree(run_dir) == before


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only tmpfs holding ``run/train.log`` (skips where mounting is not allowed)."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        (where / "run").mkdir()
        (where / "run" / "train.log").write_text("an earlier run\n")
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_run_dir_is_one_line(read_only_dir, tmp_path):
    """New: Hydra's 'OSError: [Errno 30] Read-only file system' traceback, exit 1; existing:
    'ValueError: Unable to configure handler 'file'' and two chained tracebacks."""
    assert_refused(run(tmp_path, "train.py", f"hydra.run.dir={read_only_dir / 'new'}"),
                   f"cannot write in {read_only_dir} (to make run dir {read_only_dir / 'new'}): read-only "
                   "file system; choose a writable hydra.run.dir")
    assert_refused(run(tmp_path, "train.py", f"hydra.run.dir={read_only_dir / 'run'}"),
                   f"cannot write in run dir {read_only_dir / 'run'}: read-only file system; choose a "
                   "writable hydra.run.dir")
    assert_refused(run(read_only_dir, "eval.py", "checkpoint=x.pt"),
                   f"cannot write in {read_only_dir} (to make the run dir under "
                   f"{read_only_dir / 'outputs'}): read-only file system; choose a writable hydra.run.dir")
