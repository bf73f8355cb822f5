"""Checkpoint files: atomic writes, keep-last-K, newest *valid* lookup, RNG round trip."""

import os
import random

import numpy as np
import pytest
import torch

from nlvideo.engine import checkpoint as ck


def _state(v: float) -> dict:
    return {"model": {"w": torch.full((3,), v)}, "iteration": int(v)}


def test_save_keeps_last_k_and_leaves_no_temp_files(tmp_path):
    for it in (2, 4, 6, 8):
        ck.save_checkpoint(_state(it), tmp_path, it, keep_last=2)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["checkpoint_000000006.pt", "checkpoint_000000008.pt"]
    assert not list(tmp_path.glob("*.tmp"))


def test_latest_valid_skips_corrupt_newest_and_ignores_partial_temp(tmp_path):
    ck.save_checkpoint(_state(2), tmp_path, 2)
    ck.save_checkpoint(_state(4), tmp_path, 4)
    newest = ck.checkpoint_path(tmp_path, 6)
    good = ck.checkpoint_path(tmp_path, 4).read_bytes()
    newest.write_bytes(good[: len(good) // 2])  # truncated copy, as a crash in a non-atomic writer leaves
    (tmp_path / ".checkpoint_000000008.pt.abc.tmp").write_bytes(b"partial")  # a killed atomic writer
    path, state = ck.load_latest_valid(tmp_path)
    assert path.name == "checkpoint_000000004.pt"
    assert torch.equal(state["model"]["w"], torch.full((3,), 4.0))


def test_latest_valid_none_when_empty(tmp_path):
    assert ck.load_latest_valid(tmp_path / "missing") is None
    assert ck.load_latest_valid(tmp_path) is None


def test_rng_state_round_trip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    ck.save_checkpoint({"model": {}, "rng": ck.rng_state()}, tmp_path, 1)
    expected = (random.random(), float(np.random.rand()), torch.rand(2))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    _, state = ck.load_latest_valid(tmp_path)
    ck.set_rng_state(state["rng"])
    got = (random.random(), float(np.random.rand()), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_states_are_plain_data_and_older_numpy_states_still_resume(tmp_path):
    """New checkpoints load with weights_only=True and no allowed globals; older ones, holding NumPy's
    legacy state tuple (an ndarray inside), still load through the safe reader and restore it."""
    path = ck.save_checkpoint({"model": {}, "rng": ck.rng_state()}, tmp_path, 1)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    np.random.seed(3)
    old = ck.save_checkpoint({"model": {}, "rng": {**ck.rng_state(), "numpy": np.random.get_state()}},
                             tmp_path, 2)
    expected = np.random.rand(3)
    np.random.seed(99)
    ck.set_rng_state(ck.load_checkpoint(old)["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def _run_state(v: float, run_id: str) -> dict:
    return {**_state(v), "run_id": run_id}


def test_rotation_deletes_only_its_own_runs_files(tmp_path):
    """Run A left 5 and 6; run B writing 1..3 with keep_last=2 keeps its own newest two and A's files
    (pruning by iteration number alone deleted B's fresh checkpoints and kept A's)."""
    for it in (5, 6):
        ck.save_checkpoint(_run_state(it, "A"), tmp_path, it, keep_last=2)
    for it in (1, 2, 3):
        ck.save_checkpoint(_run_state(it, "B"), tmp_path, it, keep_last=2)
    assert [int(p.stem.split("_")[1]) for p in ck.list_checkpoints(tmp_path)] == [2, 3, 5, 6]


def test_unreadable_checkpoint_is_set_aside_not_ranked(tmp_path):
    """A truncated newest file with keep_last=1 used to outrank (and delete) every new checkpoint."""
    ck.save_checkpoint(_run_state(1, "A"), tmp_path, 1, keep_last=1)
    good = ck.checkpoint_path(tmp_path, 1).read_bytes()
    ck.checkpoint_path(tmp_path, 9).write_bytes(good[: len(good) // 2])
    written = ck.save_checkpoint(_run_state(2, "A"), tmp_path, 2, keep_last=1)
    assert ck.list_checkpoints(tmp_path) == [written]
    assert (tmp_path / ck.UNREADABLE_DIR / "checkpoint_000000009.pt").is_file()  # kept, moved aside
    assert ck.run_id_of(written) == "A"


def test_only_temp_files_of_dead_writers_are_removed(tmp_path):
    """A live writer's temporary file survives another save's clean-up; a dead writer's goes."""
    import socket
    import subprocess
    import sys

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    live = tmp_path / f".checkpoint_000000004.pt.{host}-{os.getpid()}.abc123.tmp"
    gone = tmp_path / f".checkpoint_000000003.pt.{host}-{dead}.def456.tmp"
    for p in (live, gone):
        p.write_bytes(b"partial")
    ck.save_checkpoint(_run_state(1, "A"), tmp_path, 1)
    assert live.exists() and not gone.exists()


def test_run_dir_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    import subprocess
    import sys

    from nlvideo.engine.run_lock import RunDirBusy, RunDirLock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nlvideo.engine.run_lock import RunDirLock; "
         f"RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=rf"in use by host \S+ pid {holder.pid} since"):
            RunDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(tmp_path):  # the kernel released the dead holder's lock
        pass


def _held_elsewhere(run_dir) -> bool:
    """Whether another process finds the dir held (a record lock never conflicts with its own
    process, and opening the file here would drop this process's hold)."""
    import subprocess
    import sys

    probe = ("import sys; from nlvideo.engine.run_lock import RunDirBusy, RunDirLock\n"
             f"try: RunDirLock({str(run_dir)!r}).acquire()\nexcept RunDirBusy: sys.exit(3)")
    return subprocess.run([sys.executable, "-c", probe]).returncode == 3


def test_run_log_file_holds_the_run_dir_until_closed_and_train_shares_the_hold(tmp_path, monkeypatch):
    """The job's log file takes the lock before Hydra writes .hydra/ (hydra/job_logging=nlvideo);
    train()'s own RunDirLock in the same process must not then find the dir busy."""
    from nlvideo.engine.run_lock import RunDirLock, RunLogFile

    for key in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    log_file = RunLogFile(str(tmp_path / "train.log"))
    assert _held_elsewhere(tmp_path)
    with RunDirLock(tmp_path):  # train()'s lock: shares the hold
        pass
    assert _held_elsewhere(tmp_path)  # train() ended, the job (and its log file) still holds the dir
    log_file.close()  # Hydra configures the next job of a sweep, or the process exits
    assert not _held_elsewhere(tmp_path)

    monkeypatch.setenv("RANK", "1")  # a rank > 0 (submitit) logs into rank 0's dir: it does not lock
    other_rank = RunLogFile(str(tmp_path / "train.log"))
    assert not _held_elsewhere(tmp_path)
    other_rank.close()
