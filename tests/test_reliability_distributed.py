"""Distributed faults with real 2-process torchrun (gloo) jobs: a worker SIGKILLed mid-epoch is
restarted by ``--max-restarts=1`` and the job resumes from the last checkpoint and finishes; bad videos
met by either rank are reported once for the whole job; a rank that dies on a bad sample takes the job
down promptly instead of leaving the other rank waiting in a collective.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlvideo.data import ClipSampler
from tests.hostile import make_hostile_root
from tests.test_train_run import REPO, app_env, tiny_overrides

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"RANK="):
            return int(kv[5:])
    return None


@pytest.mark.slow
def test_killed_worker_is_restarted_and_the_job_resumes_and_finishes(synthetic_root, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [*TORCHRUN, "--max-restarts=1", "train.py", *tiny_overrides(synthetic_root), "trainer.epochs=2",
           "trainer.eval_period=0", "trainer.checkpoint.every_iters=2", "trainer.checkpoint.keep_last=10",
           "data.batch_size=2", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out, killed = [], None
    for line in proc.stdout:
        out.append(line)
        if killed is None and re.search(r"\] +it 3 +loss", line):  # checkpoint 2 is on disk
            workers = {rank_of(c): c for c in children(proc.pid)}
            killed = workers[1]
            subprocess.run(["kill", "-9", str(killed)], check=True)
    code = proc.wait(timeout=300)
    text = "".join(out)
    assert killed is not None and code == 0, text[-4000:]
    assert re.search(r"restart|Restarting", text, re.IGNORECASE), text[-4000:]
    assert re.search(r"resumed from \S+checkpoint_00000000[24]\.pt", text), text[-4000:]
    assert "training finished: 8 iterations" in text
    assert (run_dir / "checkpoints" / "checkpoint_000000008.pt").is_file()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_ddp")
    return root, make_hostile_root(root)


def data_args(root: Path) -> list[str]:
    return ["data=kinetics400", f"data.root={root}", "data.num_classes=2", "data.train_jitter_scales=[32,40]",
            "data.train_crop_size=32", "data.test_scale=32", "data.test_crop_size=32", "data.batch_size=2",
            "data.num_workers=0", "model.width=8", "trainer.progress=lines",
            "trainer.precise_bn.num_batches=2"]


@pytest.mark.slow
def test_bad_videos_on_both_ranks_are_reported_once_per_job(hostile, tmp_path):
    root, kinds = hostile
    run_dir = tmp_path / "run"
    r = subprocess.run([*TORCHRUN, "train.py", *data_args(root), "data.max_retries=30", "trainer.epochs=1",
                        f"hydra.run.dir={run_dir}"], cwd=REPO, env=app_env(), text=True, capture_output=True,
                       timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    log = (run_dir / "train.log").read_text()
    reported = re.findall(r"unreadable video (.+?) \(", log)
    assert sorted(reported) == sorted(str(root / rel) for rel in kinds["broken"]), log[-3000:]
    assert "validation: top1" in log and "skipped_videos 8.00" in log
    assert text.count(f"unreadable video {root}") == 8  # console: rank 1 repeats none of them


@pytest.mark.slow
def test_rank_dying_on_a_bad_sample_ends_the_job_instead_of_deadlocking(hostile, tmp_path):
    root, kinds = hostile
    # 5 videos; rank 1's first training sample (global position 1 of epoch 0) is the zero-byte file.
    order = ClipSampler(5, shuffle=True, seed=0, world_size=2, rank=1).global_order()
    names = [*kinds["good"], "videos/vfr.mp4"]
    names[order[1]] = "videos/zero_byte.mp4"
    (root / "one_bad.csv").write_text("".join(f"{n}\t{i % 2}\n" for i, n in enumerate(names)))
    start = time.monotonic()
    r = subprocess.run([*TORCHRUN, "train.py", *data_args(root), "data.train_list=one_bad.csv",
                        "data.max_retries=0", "trainer.epochs=1", "trainer.eval_period=0",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=app_env(), text=True,
                       capture_output=True, timeout=300)
    elapsed = time.monotonic() - start
    text = r.stdout + r.stderr
    assert r.returncode != 0, text[-4000:]
    assert "1 consecutive unreadable videos" in text and str(root / "videos" / "zero_byte.mp4") in text
    assert elapsed < 120, f"the job took {elapsed:.0f}s to end"
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))
