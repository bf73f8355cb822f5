"""Smoke test of scripts/bench_prepared.py: tiny videos, every section of the table, in-process."""

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "bench_prepared", Path(__file__).resolve().parents[1] / "scripts" / "bench_prepared.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_prepared"] = bench
_SPEC.loader.exec_module(bench)


def test_tiny_run_prints_every_table():
    out = bench.main(["--sizes", "160x96", "--videos", "1", "--seconds", "2", "--clips", "2",
                      "--loader-clips", "4", "--workers", "0", "--rounds", "1"])
    rows = [line for line in out if line.startswith("| 160x96 |")]
    assert len(rows) == 5, out  # 32x2 and 8x8 per core, one loader row, 10x3 testing of both copies
    assert rows[0].startswith("| 160x96 | 160x96 | 32x2 |") and rows[1].split("|")[3].strip() == "8x8"
    assert rows[3].startswith("| 160x96 | downloaded |") and rows[4].startswith("| 160x96 | prepared |")
    assert any("prepared to 160x96" in line for line in out)


def test_sections_measure_only_the_tables_asked_for():
    out = bench.main(["--sizes", "160x96", "--videos", "1", "--seconds", "2", "--rounds", "1",
                      "--sections", "test"])
    rows = [line for line in out if line.startswith("| 160x96 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["downloaded", "prepared"], out
    assert all(float(row.split("|")[3]) > 0 and float(row.split("|")[4]) > 0 for row in rows)
