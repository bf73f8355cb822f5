"""Smoke test of scripts/bench_nonlocal.py: a tiny configuration, both paths, in-process."""

import importlib.util
import queue
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_nonlocal", Path(__file__).resolve().parents[1] / "scripts" / "bench_nonlocal.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_nonlocal"] = bench  # dataclasses look their module up
_SPEC.loader.exec_module(bench)


@pytest.mark.parametrize(("sub_sample", "channels_last"), [(True, False), (False, False), (True, True)])
def test_tiny_config_runs_both_paths_and_they_agree(tmp_path, monkeypatch, sub_sample, channels_last):
    monkeypatch.setitem(bench.SHAPES, "tiny", (16, 2, 6))
    cfg = bench.Config("tiny", sub_sample=sub_sample, channels_last=channels_last)
    results = {}
    for impl in ("naive", "efficient"):
        q = queue.Queue()
        bench.child(cfg, impl, "cpu", 2, 1, 0, str(tmp_path / f"{impl}.pt"), q)
        results[impl] = q.get_nowait()
        assert len(results[impl]["ms"]) == 2 and "peak" in results[impl]  # RSS peak: fresh process only
        assert results[impl]["saved"] > 0
    d = bench.compare(str(tmp_path / "naive.pt"), str(tmp_path / "efficient.pt"))
    assert d["z"] <= 1e-5 and d["dx_rel"] <= 1e-5, d
    assert cfg.naive_map_bytes() == 2 * 72 * (18 if sub_sample else 72) * 4  # B N M fp32


@pytest.mark.parametrize(("limit", "cap"), [(0, 64), (1, 64), (5, 64), (37, 64), (64, 64), (100, 64), (6, 6)])
def test_largest_fitting_batch_search(limit, cap):
    """Doubling then bisection finds the last batch that fits, probing O(log cap) batches."""
    probed = []

    def fits(batch: int) -> bool:
        probed.append(batch)
        return batch <= limit

    assert bench.largest_fitting(fits, cap) == min(limit, cap)
    assert max(probed) <= cap and len(probed) <= 2 * cap.bit_length() + 1


def test_a_crashing_child_is_reported_at_once_not_after_the_timeout(tmp_path, monkeypatch, capfd):
    """An out-of-memory probe can be killed outright; the parent must not wait out --timeout."""
    import argparse
    import time

    monkeypatch.syspath_prepend(str(Path(bench.__file__).parent))  # the spawned child imports the script
    cfg = bench.Config("16,2,6", instantiation="no_such_function")  # the child raises in build()
    args = argparse.Namespace(repeat=1, warmup=0, threads=1, device="cpu", timeout=600.0)
    start = time.monotonic()
    assert bench.run_one(cfg, "efficient", args, str(tmp_path / "x.pt")) is None
    assert time.monotonic() - start < 60
    assert "unknown instantiation 'no_such_function'" in capfd.readouterr().err  # died where meant to


def test_max_batch_reports_a_crashing_configuration_as_an_error_not_as_batch_0(tmp_path, monkeypatch, capfd):
    import argparse

    monkeypatch.syspath_prepend(str(Path(bench.__file__).parent))  # the spawned children import the script
    args = argparse.Namespace(repeat=1, warmup=0, threads=1, device="cpu", timeout=600.0, memory_gib=1.0,
                              max_batch_cap=4)
    bench.max_batch_table([bench.Config("4,1,1")], args, str(tmp_path))  # 1x1 frames: nothing to pool
    out = capfd.readouterr()
    assert "| 4,1,1 emb-gauss fp32 sub | error | error | — |" in out.out
    assert "Output size is too small" in out.err


def test_take_turns_alternates_the_order_and_drops_the_warmup_rounds():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.take_turns(steps, rounds=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t) for t in times.values()] == [3, 3]
    assert bench.turn_ratio({"a": [2.0, 4.0, 9.0], "b": [1.0, 1.0, 3.0]}, "a", "b") == 3.0  # per-round ratios


def test_interleaved_table_names_the_path_auto_takes(monkeypatch, capsys):
    """--interleaved on a tiny shape: one row per config, naive vs efficient, and auto's choice."""
    import argparse

    monkeypatch.setitem(bench.SHAPES, "tiny", (16, 2, 6))
    both = (False, True)
    configs = [bench.Config("tiny", channels_last=cl, autocast=amp) for cl in both for amp in both]
    bench.interleaved_table(configs, argparse.Namespace(rounds=2, warmup=0))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 4
    for row, ours in zip(rows, ("cpu_chunked", "sdpa", "cpu_chunked", "sdpa"), strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "naive" and cells[3] == ours, row  # impl=auto trains on naive on CPU (issue 18)
