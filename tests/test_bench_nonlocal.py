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
