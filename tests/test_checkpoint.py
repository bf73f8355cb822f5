"""Checkpoint files: atomic writes, keep-last-K, newest *valid* lookup, RNG round trip."""

import random

import numpy as np
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
