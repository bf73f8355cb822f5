"""scripts/nl_vs_baseline.sh writes where the user says (default ./outputs/nl_vs_baseline of the
current directory), never into the checkout: it used to cd into the repository, overwrite the
committed docs/nl_vs_baseline/{curves.png,table.md,factors.md} and put its runs in the repository's
outputs/. The committed figures change only with --update-docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_train_run import REPO, app_env, tiny_overrides

SCRIPT = REPO / "scripts" / "nl_vs_baseline.sh"
DOCS = REPO / "docs" / "nl_vs_baseline"


def script(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, text=True, capture_output=True, timeout=600,
                          env={**app_env(), "PYTHON": sys.executable, **env})


def test_the_plan_writes_under_the_current_directory_and_never_into_docs(tmp_path):
    r = script(tmp_path, "--dry-run", "--", "trainer.epochs=2", MODELS="c2d,c2d_nl5")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "outputs" / "nl_vs_baseline"
    plan = r.stdout.splitlines()
    assert plan[0] == (f"{sys.executable} {REPO / 'train.py'} -m +experiment=nl_vs_baseline "
                       f"model=c2d\\,c2d_nl5 seed=0 hydra.sweep.dir={out / 'runs'} trainer.epochs=2")
    assert len(plan) == 5 and f"--out {out} " in plan[3] and plan[4].endswith(f"> {out / 'factors.md'}")
    assert "docs" not in r.stdout and list(tmp_path.iterdir()) == []  # a plan creates nothing

    r = script(tmp_path, "--dry-run", "--update-docs", "--models", "c2d", "--out", "mine")
    assert r.returncode == 0, r.stderr
    copies = [line for line in r.stdout.splitlines() if str(DOCS) in line]
    assert copies[-1] == f"mv {DOCS / '.factors.md.tmp'} {DOCS / 'factors.md'}" and len(copies) == 6
    assert f"--out {tmp_path / 'mine'} " in r.stdout


def test_bad_arguments_and_an_output_in_docs_are_refused_in_one_line(tmp_path):
    for args, message in [
        (["--out", str(DOCS)], f"error: --out {DOCS} is inside the repository's docs/: choose another "
                               "directory (--update-docs copies the figures there)"),
        (["--bogus"], "error: unknown option --bogus (see --help)"),
        (["--out"], "error: --out needs a value (see --help)"),
        (["trainer.epochs=2"], "error: unexpected argument trainer.epochs=2: train.py overrides go after -- "
                               "(see --help)"),
    ]:
        r = script(tmp_path, *args)
        assert r.returncode == 2 and r.stderr.splitlines() == [message], (args, r.stderr)
        assert r.stdout == ""


def test_a_tiny_real_run_leaves_the_checkout_alone(synthetic_root, tmp_path):
    """One model, 2 epochs of 2 iterations: train, test, compare and the factor table all land under
    --out; the committed figures are byte-identical."""
    committed = {p.name: p.read_bytes() for p in DOCS.iterdir()}
    repo_outputs = (REPO / "outputs" / "nl_vs_baseline").exists()
    r = script(tmp_path, "--models", "c2d_nl1", "--out", "cmp", "--", *tiny_overrides(synthetic_root),
               "trainer.epochs=2", "trainer.debug.max_iters_per_epoch=2", "trainer.precise_bn.num_batches=1",
               "data.num_workers=0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "cmp"
    assert {p.name for p in out.iterdir()} == {"runs", "curves.png", "table.md", "factors.md"}
    assert (out / "runs" / "c2d_nl1_seed0" / "eval" / "metrics.json").is_file()
    assert {p.name: p.read_bytes() for p in DOCS.iterdir()} == committed
    assert (REPO / "outputs" / "nl_vs_baseline").exists() == repo_outputs
