"""scripts/bench_multigrid.py: the plan it prints, its refusals, and a tiny real benchmark (one seed, one
truncated epoch of each schedule) whose report holds a number in every cell."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import yaml

from nlvideo.compare import find_event_dirs, load_run
from tests.test_train_run import REPO, app_env, tiny_overrides

SCRIPT = REPO / "scripts" / "bench_multigrid.py"


def script_module():
    """The script as a module, for its functions."""
    spec = importlib.util.spec_from_file_location("bench_multigrid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_multigrid"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=app_env(), text=True,
                          capture_output=True, timeout=timeout)


def test_the_default_plan_trains_three_variants_of_three_seeds(tmp_path):
    r = bench("--dry-run", "--out", str(tmp_path / "mg"), "--", "data.num_workers=2")
    assert r.returncode == 0, r.stderr
    plan = r.stdout.splitlines()
    runs = [re.fullmatch(rf"{sys.executable} {REPO / 'train.py'} \+experiment=nl_vs_baseline model=(\S+) "
                         r"model.width=8 trainer.epochs=6 seed=(\d) trainer.multigrid.long_cycle=(\w+) "
                         r"trainer.multigrid.short_cycle=(\w+) data.num_workers=2 hydra.run.dir=(\S+)",
                         line).groups() for line in plan]
    variants = [("c2d_nl5", "standard", "false"), ("c2d_nl5", "multigrid", "true"),
                ("c2d", "multigrid", "true")]
    runs_dir = tmp_path / "mg" / "runs"
    assert runs == [(model, str(seed), cycles, cycles, str(runs_dir / f"{model}_{schedule}_seed{seed}"))
                    for seed in range(3) for model, schedule, cycles in variants]
    assert not (tmp_path / "mg").exists()  # a plan creates nothing


def test_bad_arguments_and_overrides_are_refused_in_one_line_before_training(tmp_path):
    for args, message in [
        (["--models", "c2d,nope"], "error: --models nope: no such model; choose from c2d, c2d_nl1, "),
        (["--", "trainer.epoch=2"], "error: trainer.epoch=2: trainer.epoch is not a config key; did you mean "
                                    "trainer.epochs?"),
    ]:
        r = bench("--out", str(tmp_path / "mg"), *args)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith(message), (args, r.stderr)
    assert not (tmp_path / "mg" / "runs").exists()
    r = bench("--epochs", "0", "--dry-run")
    assert r.returncode == 2 and "argument --epochs: expected an integer >= 1, got '0'" in r.stderr


NUMBER = r"\d[\d,]*(\.\d+)?( \(\d[\d,]*(\.\d+)?–\d[\d,]*(\.\d+)?\))?"
CLOCK = r"\d+:\d\d:\d\d"


def test_a_tiny_benchmark_reports_every_variant_and_a_rerun_keeps_its_runs(synthetic_root, tmp_path):
    """One seed, one epoch truncated to 2 steps (batch 1, so that multigrid's 16x batches fit the 16
    training videos): every cell of the report holds a number, the standard schedule reaches its own
    final accuracy; the same command again trains nothing; another command into the same --out is refused."""
    out = tmp_path / "mg"
    tiny = ["--models", "c2d_nl1", "--seeds", "0", "--epochs", "1", "--out", str(out), "--",
            *tiny_overrides(synthetic_root), "data.batch_size=1", "trainer.debug.max_iters_per_epoch=2",
            "trainer.precise_bn.enabled=false", "optim.warmup=0"]
    r = bench(*tiny)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (out / "report.md").read_text()
    rows = {cells[0]: cells[1:] for line in report.splitlines() if line.startswith("| c2d")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert list(rows) == ["c2d_nl1 standard", "c2d_nl1 multigrid"]
    for variant, (runs, final, end, gmacs, reach, reach_gmacs, ratio) in rows.items():
        assert runs == "1" and re.fullmatch(NUMBER, final) and re.fullmatch(CLOCK, end), (variant, rows)
        assert re.fullmatch(NUMBER, gmacs) and float(gmacs.replace(",", "")) > 0, (variant, rows)
        reaches = variant.endswith("standard") or reach != "—"
        assert not reaches or (re.fullmatch(CLOCK, reach) and re.fullmatch(NUMBER, reach_gmacs)
                               and re.fullmatch(r"\d+\.\d\dx", ratio)), (variant, rows)
    assert rows["c2d_nl1 standard"][6] == "1.00x"
    assert re.search(r"Target: \*\*\d+\.\d %\*\* validation top-1", report) and "Warning" not in report
    assert r.stdout.count("| c2d_nl1 ") == 2 and (out / "comparison" / "curves.png").stat().st_size > 20_000
    assert "time to val top-1 ≥" in (out / "comparison" / "table.md").read_text()
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["c2d_nl1_multigrid_seed0.log",
                                                                "c2d_nl1_standard_seed0.log"]

    again = bench(*tiny)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished before, kept") == 2 and "training in" not in again.stdout
    assert [line for line in again.stdout.splitlines() if line.startswith("| c2d")] == [
        line for line in r.stdout.splitlines() if line.startswith("| c2d")]

    other = bench(*tiny, "trainer.log_period=2")
    assert other.returncode == 2 and len(other.stderr.splitlines()) == 1
    assert f"error: {out / 'runs' / 'c2d_nl1_standard_seed0'} was trained by another command" in other.stderr

    # The GMACs come from the schedule recomputed from the run's config, checked against the shapes the
    # trainer logged: a config that no longer says what trained (other short-cycle crops: 36² where 24²
    # trained) is a warning.
    multigrid = out / "runs" / "c2d_nl1_multigrid_seed0"
    per_step, warnings = script_module().step_gmacs(load_run(find_event_dirs([multigrid])[0]))
    assert warnings == [] and f"{per_step.sum():.3g}" == rows["c2d_nl1 multigrid"][3]
    config = yaml.safe_load((multigrid / "config_resolved.yaml").read_text())
    config["trainer"]["multigrid"]["short_cycle_factors"] = [0.75, 0.9]
    (multigrid / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    _, warnings = script_module().step_gmacs(load_run(find_event_dirs([multigrid])[0]))
    assert len(warnings) == 1 and warnings[0].startswith(
        "c2d_nl1_multigrid_seed0: the logged multigrid shapes (clips, frames, crop) differ from the schedule")


def test_ctrl_c_stops_with_one_line_and_the_same_command_resumes_the_run(synthetic_root, tmp_path):
    """SIGINT to the process group (what a terminal's Ctrl-C sends) while the first run trains: train.py
    checkpoints, the script exits 130 with one line and no report; the same command resumes that run
    (a second train.py session, so a second events file) and finishes the benchmark."""
    import os
    import signal
    import time

    out = tmp_path / "mg"
    args = ["--models", "c2d", "--seeds", "0", "--epochs", "2", "--out", str(out), "--",
            *tiny_overrides(synthetic_root), "data.batch_size=1", "trainer.precise_bn.enabled=false",
            "optim.warmup=0"]
    child = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=REPO, env=app_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    log = out / "runs" / "c2d_standard_seed0" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "  it 3  " in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stdout + stderr
    assert stderr.splitlines() == ["bench_multigrid: interrupted; the same command goes on where it stopped"]
    assert not (out / "report.md").exists() and (out / "logs" / "c2d_standard_seed0.log.partial").is_file()
    assert list((out / "runs" / "c2d_standard_seed0" / "checkpoints").glob("checkpoint_*.pt"))

    r = bench(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = load_run(find_event_dirs([out / "runs" / "c2d_standard_seed0"])[0])
    steps, _ = run.series("train/top1")
    assert len(run.sessions) == 2 and steps.tolist() == list(range(1, 33))  # 2 epochs of 16, each step once
    assert (out / "report.md").is_file() and (out / "logs" / "c2d_standard_seed0.log").is_file()
