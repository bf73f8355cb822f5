"""``python -m nlvideo.data.prepare`` and ``python -m nlvideo.data.check`` as an adversarial user runs
them: real worker processes killed with SIGKILL, a decoder stuck on a fifo, real SIGINT, two runs on
one destination, file names that are not UTF-8 or hold a newline or a tab, replaced sources, option
typos, a read-only and a full destination (real tmpfs mounts; skipped where mounting is not allowed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlvideo.data import build_dataset
from nlvideo.data.check import main as check
from nlvideo.data.dataset import split_overlap_warning
from nlvideo.data.decode import DecodeError, open_video
from nlvideo.data.parallel import FAULT_ENV
from nlvideo.data.prepare.__main__ import main as prepare
from tests.conftest import REPO
from tests.hostile import encode, text_as_mp4
from tests.test_data_check import SMALL as CHECK_SMALL
from tests.test_data_dataset import kinetics_cfg
from tests.test_data_prepare import charades_csv
from tests.test_train_run import app_env

SMALL = ["--short-side", "32", "--gop", "4"]
LATIN1 = os.fsdecode(b"caf\xe9")  # a Latin-1 "café" as Python holds a name that is not UTF-8


def downloads(src: Path, per_class: int = 2) -> list[Path]:
    """Kinetics class folders ``SRC/train/c{0,1}/v{i}.mp4`` (small real videos)."""
    return [encode(src / "train" / f"c{i % 2}" / f"v{i}.mp4", num_frames=12 + i, width=48, height=32)
            for i in range(2 * per_class)]


def start(module: str, *args: str, stderr: Path | None = None) -> subprocess.Popen:
    """``python -m module args`` in its own session (so a signal reaches it and its workers only)."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=app_env(), text=True,
                            stdout=subprocess.PIPE, stderr=stderr.open("w") if stderr else subprocess.PIPE,
                            start_new_session=True)


def until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def live_children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that have not exited (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in "ZX":
                found.append(int(entry))
    return found


def report_of(dst: Path) -> dict:
    return json.loads((dst / "prepare_report.json").read_text())


# ------------------------------------------------------------------------------------- dead and stuck workers


def test_sigkilled_worker_fails_its_video_and_the_run_finishes(tmp_path):
    """A worker stuck on one file (a fifo: opening it blocks) is SIGKILLed, as the OOM killer does: that
    video is failed with `worker killed by signal 9`, the run finishes (before: it waited forever)."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    videos = downloads(src)
    os.mkfifo(src / "train" / "c0" / "stuck.mp4")
    proc = start("nlvideo.data.prepare", "kinetics", str(src), str(dst), *SMALL, "--workers", "2")
    until(lambda: all((dst / "train" / v.parent.name / v.name).is_file() for v in videos), what="outputs")
    until(lambda: len(live_children(proc.pid)) == 1, what="one busy worker")  # the other one has ended
    os.kill(live_children(proc.pid)[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "4 prepared (4 now, 0 already done), 1 failed" in out
    assert report_of(dst)["failed"] == [{"source": str(src / "train/c0/stuck.mp4"),
                                         "reason": "worker killed by signal 9"}]
    assert len((dst / "train.csv").read_text().splitlines()) == 4 and not list(dst.rglob("*.part"))


def test_sigkilled_prepare_leaves_no_worker_behind(tmp_path):
    """The workers die with prepare itself (before: one stuck on a file ran on forever, orphaned)."""
    src = tmp_path / "raw"
    downloads(src)
    os.mkfifo(src / "train" / "c0" / "stuck.mp4")
    proc = start("nlvideo.data.prepare", "kinetics", str(src), str(tmp_path / "k400"), *SMALL, "--workers",
                 "2")
    until(lambda: len(list((tmp_path / "k400").rglob("v*.mp4"))) == 4, what="the other outputs")
    until(lambda: len(live_children(proc.pid)) == 1, what="one busy worker")  # the one stuck on the fifo
    workers = live_children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    until(lambda: not Path(f"/proc/{workers[0]}").exists() or Path(f"/proc/{workers[0]}/stat").read_text()
          .rpartition(")")[2].split()[0] in "ZX", timeout=10, what="the worker to end")


def test_stuck_decoder_times_out_and_the_run_finishes(tmp_path, capsys):
    src, dst = tmp_path / "raw", tmp_path / "k400"
    downloads(src)
    os.mkfifo(src / "train" / "c1" / "stuck.mp4")
    began = time.time()
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "2", "--video-timeout", "2"]) == 0
    assert time.time() - began < 30
    assert "4 prepared (4 now, 0 already done), 1 failed" in capsys.readouterr().out
    assert report_of(dst)["failed"] == [{"source": str(src / "train/c1/stuck.mp4"),
                                         "reason": "timed out after 2 s"}]


def test_check_survives_a_killed_and_a_stuck_worker(tmp_path, monkeypatch, capsys):
    """The same watchdog in check: one video's worker SIGKILLs itself, another one's hangs."""
    root = tmp_path / "root"
    for i in range(4):
        encode(root / "videos" / f"v{i}.mp4", num_frames=40)
    (root / "train.csv").write_text("".join(f"videos/v{i}.mp4\t{i % 2}\n" for i in range(4)))
    (root / "val.csv").write_text("videos/v0.mp4\t0\n")
    args = ["data=kinetics400", f"data.root={root}", *CHECK_SMALL, "--workers", "2", "--out", str(tmp_path)]
    for fault, video, reason in (("kill", "v1.mp4", "worker killed by signal 9"),
                                 ("hang", "v2.mp4", "timed out after 3 s")):
        monkeypatch.setenv(FAULT_ENV, f"{fault}:{video}")
        assert check([*args, "--video-timeout", "3"]) == 1
        report = json.loads((tmp_path / "check_report.json").read_text())
        assert [(p["path"], p["kind"], p["detail"]) for p in report["problems"]] == [
            (f"videos/{video}", "unreadable", reason)]
        assert (tmp_path / "exclude.txt").read_text() == f"videos/{video}\tunreadable: {reason}\n"
    assert "4 videos, 1 with problems" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.parametrize("tool", ["prepare", "check"])
def test_ctrl_c_exits_130_with_one_line(tmp_path, tool):
    src, err = tmp_path / "raw", tmp_path / "stderr.txt"
    downloads(src)
    if tool == "prepare":
        os.mkfifo(src / "train" / "c0" / "stuck.mp4")  # keeps the run busy until the signal
        proc = start("nlvideo.data.prepare", "kinetics", str(src), str(tmp_path / "k400"), *SMALL,
                     "--workers", "1", stderr=err)
        said = "rerun the same command to resume"
    else:
        (src / "train.csv").write_text("".join(f"train/c{i % 2}/v{i}.mp4\t{i % 2}\n" for i in range(4)))
        env_fault = dict(app_env(), **{FAULT_ENV: "hang:v0.mp4"})
        proc = subprocess.Popen([sys.executable, "-m", "nlvideo.data.check", "data=kinetics400",
                                 f"data.root={src}", *CHECK_SMALL, "--splits", "train", "--workers", "1",
                                 "--out", str(tmp_path)],
                                cwd=REPO, env=env_fault, text=True, stdout=subprocess.PIPE,
                                stderr=err.open("w"), start_new_session=True)
        said = "no report written; rerun the same command"
    until(lambda: f"{tool}" in err.read_text() and "%" in err.read_text(), what="the progress bar")
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the process group, workers too
    proc.communicate(timeout=60)
    lines = [line for line in err.read_text().replace("\r", "\n").splitlines()
             if line.strip() and "video/s" not in line and "?video" not in line]
    assert proc.returncode == 130, lines
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and said in lines[0], lines
    assert not live_children(proc.pid)
    if tool == "prepare":
        assert not list((tmp_path / "k400").rglob("*.part"))


# ------------------------------------------------------------------------------------------- odd file names


def test_names_not_utf8_or_with_newline_or_tab_are_prepared_under_safe_names(tmp_path, capsys):
    """Before: UnicodeEncodeError writing the lists (no lists, no report), and a list that check and
    train refuse for a newline or tab in a name."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    downloads(src)
    for name in (f"{LATIN1}.mp4", "new\nline.mp4", "a\ttab.mp4"):
        encode(src / "train" / "c0" / name, num_frames=12, width=48, height=32)
    encode(src / "train" / f"{LATIN1} class" / "x.mp4", num_frames=12, width=48, height=32)
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "8 videos found, 8 prepared (8 now, 0 already done), 0 failed" in printed
    assert "3 prepared under a safe name" in printed
    report = report_of(dst)
    assert sorted((r["source"], r["output"]) for r in report["renamed"]) == sorted(
        (str(src / "train/c0" / shown), f"train/c0/{safe}") for shown, safe in
        (("caf\\xe9.mp4", "caf%E9.mp4"), ("new\\nline.mp4", "new%0Aline.mp4"),
                         ("a\\ttab.mp4", "a%09tab.mp4")))
    assert json.loads((dst / "classids.json").read_text()) == {"c0": 0, "c1": 1, "caf%E9 class": 2}
    cfg = kinetics_cfg(dst, num_classes=3)
    assert build_dataset(cfg, "train").num_videos == 8
    assert check(["data=kinetics400", f"data.root={dst}", *CHECK_SMALL, "data.num_classes=3", "--splits",
                  "train", "--workers", "2", "--out", str(tmp_path / "check")]) == 0


def test_check_and_training_report_a_name_that_is_not_utf8(tmp_path, capsys):
    """``data.format=kinetics_folder`` on a download with a Latin-1 name: check writes its report (before:
    UnicodeEncodeError) and names the file, which training reports with the same reason."""
    root = tmp_path / "raw"
    downloads(root)
    bad = encode(root / "train" / "c1" / f"{LATIN1}.mp4", num_frames=12, width=48, height=32)
    for split in ("c0", "c1"):
        shutil.copytree(root / "train" / split, root / "val" / split)
    args = ["data=kinetics400", "data.format=kinetics_folder", f"data.root={root}", *CHECK_SMALL,
            "--workers", "1", "--out", str(tmp_path / "check")]
    assert check(args) == 1
    report = json.loads((tmp_path / "check" / "check_report.json").read_text(encoding="utf-8"))
    reason = "file name is not UTF-8 (decord cannot open it): rename the file"
    assert [(p["path"], p["kind"]) for p in report["problems"]] == [("train/c1/caf\\xe9.mp4", "unreadable"),
                                                                    ("val/c1/caf\\xe9.mp4", "unreadable")]
    assert all(p["detail"].startswith(reason) for p in report["problems"])
    assert report["not_in_exclude_list"] == ["train/c1/caf\\xe9.mp4", "val/c1/caf\\xe9.mp4"]
    assert "not in exclude.txt, which cannot hold their file names" in capsys.readouterr().out
    records = build_dataset(kinetics_cfg(root, format="kinetics_folder"), "train").records
    assert str(bad) in {r.path for r in records}
    with pytest.raises(DecodeError, match="file name is not UTF-8"):
        open_video(str(bad))


# ------------------------------------------------------------------------------------- destinations, sources


def test_second_prepare_on_a_busy_destination_refuses_or_waits(tmp_path, capsys):
    """Before: both ran, the second deleted the first's `.part` file, both exited 0."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    downloads(src)
    os.mkfifo(src / "train" / "c0" / "stuck.mp4")  # the first run is busy until its 5 s limit
    first = start("nlvideo.data.prepare", "kinetics", str(src), str(dst), *SMALL, "--workers", "1",
                  "--video-timeout", "5")
    until(lambda: "pid" in ((dst / ".nlvideo.lock").read_text() if (dst / ".nlvideo.lock").exists() else ""),
          what="the first run's lock")
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {first.pid}" in err and "pass --wait" in err
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1", "--video-timeout", "1",
                    "--wait"]) == 0
    assert first.wait(timeout=60) == 0
    assert "4 prepared (0 now, 4 already done), 1 failed" in capsys.readouterr().out


def test_destination_and_source_must_be_apart(tmp_path, capsys):
    src = tmp_path / "raw"
    downloads(src)
    before = sorted(src.rglob("*"))
    for dst, where in ((src, "is SRC"), (src / "prepared", "is inside SRC"), (tmp_path, "holds SRC")):
        assert prepare(["kinetics", str(src), str(dst), *SMALL]) == 2
        err = capsys.readouterr().err
        assert err == f"error: DST {dst} {where} {src}: choose a DST outside the downloaded dataset (and " \
                      "not one holding it)\n"
    assert sorted(src.rglob("*")) == before and not (tmp_path / ".nlvideo.lock").exists()


def test_a_second_source_into_a_prepared_destination_is_refused(tmp_path, capsys):
    """Before: the second source's videos replaced the lists (a class vanished, indices renumbered)."""
    (first, second), dst = (tmp_path / "raw1", tmp_path / "raw2"), tmp_path / "k400"
    downloads(first)
    encode(second / "train" / "other" / "w.mp4", num_frames=12, width=48, height=32)
    assert prepare(["kinetics", str(first), str(dst), *SMALL, "--workers", "1"]) == 0
    lists = (dst / "train.csv").read_text()
    capsys.readouterr()
    assert prepare(["kinetics", str(second), str(dst), *SMALL, "--workers", "1"]) == 2
    assert capsys.readouterr().err == (f"error: {dst} holds videos prepared from {first}, not {second}: "
                                       "prepare each source into its own DST\n")
    assert (dst / "train.csv").read_text() == lists and not (dst / "train" / "other").exists()
    assert prepare(["kinetics", str(first), str(dst), *SMALL, "--workers", "1"]) == 0  # the same source


def test_a_replaced_source_is_prepared_again(tmp_path, capsys):
    """Before: the rerun said `already done` and kept the output of the old file."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    videos = downloads(src)
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    encode(videos[1], num_frames=30, width=48, height=32)  # re-downloaded: another file, same name
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    assert "4 prepared (1 now, 3 already done)" in capsys.readouterr().out
    out = dst / "train" / "c1" / "v1.mp4"
    assert open_video(str(out)).num_frames == 30
    os.utime(videos[2], ns=(0, 0))  # the same bytes with another time: prepared again too
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    assert "4 prepared (1 now, 3 already done)" in capsys.readouterr().out


def test_an_output_without_a_record_counts_unless_its_source_is_newer(tmp_path, capsys):
    """Outputs of a version that recorded nothing are not all prepared again; one whose source was
    written after it is."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    videos = downloads(src)
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    outputs = [dst / "train" / v.parent.name / v.name for v in videos]
    for out in outputs:  # the same videos, with no record in their metadata
        encode(out, num_frames=5, width=48, height=32)
    os.utime(videos[0])  # written after its output
    capsys.readouterr()
    assert prepare(["kinetics", str(src), str(dst), *SMALL, "--workers", "1"]) == 0
    assert "4 prepared (1 now, 3 already done)" in capsys.readouterr().out
    assert [open_video(str(out)).num_frames for out in outputs] == [12, 5, 5, 5]


# --------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("option, message", [
    (["--preset", "veryfsat"], "argument --preset: invalid choice: 'veryfsat'"),
    (["--fps", "nan"], "argument --fps: 'nan' is not a finite number > 0"),
    (["--fps", "-30"], "argument --fps: '-30' is not a finite number > 0"),
    (["--gop", "0"], "argument --gop: '0' is not an integer >= 1"),
    (["--short-side", "1.5"], "argument --short-side: '1.5' is not an integer >= 2"),
    (["--crf", "99"], "argument --crf: invalid choice: 99"),
    (["--workers", "0"], "argument --workers: '0' is not an integer >= 1"),
    (["--video-timeout", "inf"], "argument --video-timeout: 'inf' is not a finite number > 0"),
])
def test_bad_options_are_one_line_before_any_work(tmp_path, capsys, option, message):
    src, dst = tmp_path / "raw", tmp_path / "k400"
    encode(src / "train" / "c0" / "v.mp4", num_frames=4)
    with pytest.raises(SystemExit) as exit_:
        prepare(["kinetics", str(src), str(dst), *option])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not dst.exists()


def test_all_failed_exits_nonzero_and_records_nothing(tmp_path, capsys):
    """Before: exit status 0, and prepare.json recorded the options, so the corrected rerun was refused
    although DST held no video."""
    src, dst = tmp_path / "raw", tmp_path / "k400"
    (src / "train" / "c0").mkdir(parents=True)
    text_as_mp4(src / "train" / "c0" / "v.mp4")
    assert prepare(["kinetics", str(src), str(dst), *SMALL]) == 1
    assert "error: no video was prepared" in capsys.readouterr().err
    assert not (dst / "prepare.json").exists() and report_of(dst)["summary"]["failed"] == 1
    encode(src / "train" / "c0" / "v.mp4", num_frames=12)
    assert prepare(["kinetics", str(src), str(dst), "--short-side", "40"]) == 0  # other options: accepted
    assert json.loads((dst / "prepare.json").read_text())["short_side"] == 40


# ------------------------------------------------------------------------------------- read-only, full disk


@pytest.fixture
def mount_tmpfs():
    """``mount_tmpfs(dir, options)``: a real tmpfs there (unmounted after the test); skips the test
    where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mounted = []

    def mount(where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"SKIPPED: cannot mount a tmpfs here ({r.stderr.strip()}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_destination_is_one_line(tmp_path, capsys, mount_tmpfs):
    src = tmp_path / "raw"
    downloads(src)
    dst = mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    assert prepare(["kinetics", str(src), str(dst), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Read-only file system" in err and err.count("\n") == 1


def test_full_destination_stops_in_one_line_without_leftovers(tmp_path, capsys, mount_tmpfs):
    """Before: a traceback from the list writer, no report, a leftover `.classids.json.part`."""
    src = tmp_path / "raw"
    for i in range(12):
        encode(src / "train" / f"c{i % 2}" / f"v{i:02d}.mp4", num_frames=48, width=160, height=128)
    dst = mount_tmpfs(tmp_path / "full", "size=64k")
    assert prepare(["kinetics", str(src), str(dst), "--short-side", "128", "--gop", "4", "--crf", "0",
                    "--workers", "1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line and "video/s" not in line]  # no bar
    assert err[0].startswith(f"error: {dst} cannot take more (") and "No space left on device" in err[0]
    assert "rerun the same command to resume" in err[0]
    if err[0].endswith("the report (it did not fit) follows"):
        assert len(err) == 2 and json.loads(err[1])["summary"]["failed"] == 1
    else:
        assert len(err) == 1 and report_of(dst)["summary"]["failed"] == 1
    assert not list(dst.rglob("*.part")) and not list(dst.rglob(".*.part"))


# ------------------------------------------------------------------------------------------ split overlaps


def test_videos_in_train_and_eval_are_named_by_check_and_training(tmp_path, capsys):
    root = tmp_path / "root"
    for i in range(4):
        encode(root / "videos" / f"v{i}.mp4", num_frames=40)
    (root / "train.csv").write_text("".join(f"videos/v{i}.mp4\t{i % 2}\n" for i in range(3)))
    (root / "val.csv").write_text("videos/v2.mp4\t0\nvideos/v3.mp4\t1\n")
    assert check(["data=kinetics400", f"data.root={root}", *CHECK_SMALL, "--workers", "1", "--out",
                  str(tmp_path)]) == 0
    assert json.loads((tmp_path / "check_report.json").read_text())["in_train_and_eval"] == ["videos/v2.mp4"]
    printed = capsys.readouterr().out
    assert "listed for training and for validation/testing too: 1, e.g. videos/v2.mp4" in printed
    cfg = kinetics_cfg(root)
    assert split_overlap_warning(build_dataset(cfg, "train"), build_dataset(cfg, "val")) == (
        f"val: 1 of its 2 videos are training videos too (e.g. {root / 'videos/v2.mp4'}): its scores "
        "overstate accuracy on unseen videos")
    charades = tmp_path / "charades"  # the train and test CSVs both list B2
    for vid in ("A1", "B2"):
        encode(charades / "Charades_v1_480" / f"{vid}.mp4", num_frames=40)
    charades_csv(charades / "Charades_v1_train.csv", [("A1", "c000 0.0 1.0", 1.67), ("B2", "", 1.67)])
    charades_csv(charades / "Charades_v1_test.csv", [("B2", "c001 0.0 1.0", 1.67)])
    assert check(["data=charades", f"data.root={charades}", *CHECK_SMALL, "--workers", "1", "--out",
                  str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "check_report.json").read_text())
    assert report["in_train_and_eval"] == ["Charades_v1_480/B2.mp4"]
