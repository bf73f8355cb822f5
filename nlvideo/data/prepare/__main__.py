"""``python -m nlvideo.data.prepare {kinetics,charades} SRC DST``: re-encode a downloaded dataset for fast
random access and write the lists nlvideo reads (see :mod:`nlvideo.data.prepare`).

* Checked before any work (one ``error:`` line, exit status 2, nothing written): every option (an x264
  preset, finite numbers in range), SRC and DST apart (neither inside the other: a DST inside SRC
  would make a later run take outputs for sources), SRC the one DST was prepared from
  (``DST/prepare.json``, written once a video is there) and the same options.
* One run per DST: an exclusive lock on ``DST/.nlvideo.lock`` (:class:`~nlvideo.engine.run_lock.RunDirLock`,
  as the trainer's run dir); a second run refuses in one line naming the holder, or waits (``--wait``).
* Parallel over ``--workers`` processes, progress bar with ETA; a worker that dies (the OOM killer) or
  passes ``--video-timeout`` fails its video only (:func:`~nlvideo.data.parallel.run_parallel`).
* Resumable: an output is written under a temporary name and renamed when complete, and records its
  source's size and modification time and the options in its metadata; a rerun skips an output whose
  record matches and re-encodes one whose source was replaced since. Leftovers of a killed run are
  deleted at start.
* Never stops for a bad video: each failure (and each annotated video that was not downloaded) is in
  ``DST/prepare_report.json`` with its reason, beside the summary (videos in/out, failed, hours of
  video, bytes before/after, free disk space before/after), which is printed at the end too. A full
  or read-only DST stops the run in one line (exit status 1): the report is written if it fits, else
  printed. Exit status 1 too when no video could be prepared; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nlvideo.data.annotations import shown_path
from nlvideo.data.parallel import (
    ArgumentParser,
    add_worker_options,
    int_at_least,
    positive_number,
    run_parallel,
)
from nlvideo.data.prepare.encode import X264_PRESETS, EncodeOptions, comment_of, encode_video
from nlvideo.data.prepare.layouts import (
    Job,
    Layout,
    charades_layout,
    kinetics_layout,
    renamed,
    write_atomic,
    write_charades_lists,
    write_kinetics_lists,
)
from nlvideo.engine.run_lock import RunDirBusy, RunDirLock

REPORT, OPTIONS = "prepare_report.json", "prepare.json"
DATA_CONFIG = {"kinetics": "kinetics400", "charades": "charades"}
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # no further video can be written either


@dataclass(frozen=True)
class Result:
    """One job's outcome: ``status`` is ``encoded``, ``done`` (output already there) or ``failed``;
    ``disk_error``: it failed because DST cannot take more (full, read-only)."""

    job: Job
    status: str
    seconds: float = 0.0
    in_bytes: int = 0
    out_bytes: int = 0
    reason: str = ""
    disk_error: bool = False


def source_record(source: os.stat_result, opts: EncodeOptions) -> str:
    """What an output records about how it was made (its metadata comment): the source's size and
    modification time and the options. An output whose record differs is made again."""
    return json.dumps({"source_size": source.st_size, "source_mtime_ns": source.st_mtime_ns, **asdict(opts)},
                      sort_keys=True)


def _up_to_date(out: Path, source: os.stat_result, record: str) -> float | None:
    """The seconds of video in ``out`` if it was made from this source with these options, else None.
    An output without a record (prepared by a version that wrote none, with DST's recorded options)
    counts when it is newer than its source, as ``make`` decides."""
    if not out.is_file():
        return None
    seconds, recorded = comment_of(out)
    if recorded == record or (not recorded and out.stat().st_mtime_ns >= source.st_mtime_ns):
        return seconds
    return None


def prepare_one(task: tuple[Job, str, EncodeOptions]) -> Result:
    """Encode one video unless its output is up to date; any error becomes a ``failed`` result."""
    job, dst, opts = task
    out = Path(dst) / job.output
    try:
        source = os.stat(job.source)
        in_bytes, record = source.st_size, source_record(source, opts)
        if (seconds := _up_to_date(out, source, record)) is not None:
            return Result(job, "done", seconds, in_bytes, out.stat().st_size)
        encoded = encode_video(job.source, out, opts, record)
        return Result(job, "encoded", encoded.seconds, in_bytes, out.stat().st_size)
    except Exception as e:  # noqa: BLE001 - a bad video is reported, never fatal
        return Result(job, "failed", reason=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                      disk_error=isinstance(e, OSError) and e.errno in DISK_ERRORS)


def _lost(task: tuple[Job, str, EncodeOptions], reason: str) -> Result:
    return Result(task[0], "failed", reason=reason)


def _separate(src: Path, dst: Path) -> None:
    """Refuse a DST equal to, inside or holding SRC: outputs would be taken for sources (or replace
    them), and a rerun would find them "already done"."""
    if not src.is_dir():
        raise ValueError(f"SRC {src} is not a directory")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        where = "is" if d == s else "is inside" if s in d.parents else "holds"
        raise ValueError(f"DST {dst} {where} SRC {src}: choose a DST outside the downloaded dataset "
                         "(and not one holding it)")


def _recorded(dataset: str, src: Path, opts: EncodeOptions) -> dict:
    return {"dataset": dataset, "source": shown_path(src.resolve()), **asdict(opts)}


def _check_recorded(dst: Path, wanted: dict) -> bool:
    """Whether DST already records how it was prepared; refuse another source or other options."""
    path = dst / OPTIONS
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text())
    if recorded.get("source", wanted["source"]) != wanted["source"]:
        raise ValueError(f"{dst} holds videos prepared from {recorded['source']}, not {wanted['source']}: "
                         "prepare each source into its own DST")
    options = {k: v for k, v in wanted.items() if k != "source"}
    if {k: v for k, v in recorded.items() if k != "source"} != options:
        raise ValueError(f"{dst} holds videos prepared with {recorded}, not {options}: rerun with the "
                         "same options or choose another DST")
    return True


def _write_or_reason(path: Path, text: str) -> str:
    """Write ``text`` (and a newline) into ``path`` atomically; the reason when it cannot be."""
    try:
        write_atomic(path, text + "\n")
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _remove_partial_files(dst: Path) -> None:
    """Temporary files (``.<name>.<pid>.part``) of a killed run or worker: never complete, never reused
    (only this run writes into DST: it holds DST's lock)."""
    for parent, _, files in os.walk(dst):
        for name in files:
            if name.startswith(".") and name.endswith(".part"):
                os.unlink(os.path.join(parent, name))


def _unique(jobs: list[Job]) -> tuple[list[Job], list[Result]]:
    """The first job of each output; later ones (``a.mp4`` beside ``a.mkv``) fail as duplicates."""
    first: dict[str, Job] = {}
    duplicates = []
    for job in jobs:
        if job.output in first:
            other = shown_path(first[job.output].source)
            duplicates.append(Result(job, "failed", reason=f"same output as {other}"))
        else:
            first[job.output] = job
    return list(first.values()), duplicates


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def summarise(layout: Layout, results: list[Result], free_before: int, free_after: int, wall: float) -> dict:
    ok = [r for r in results if r.status != "failed"]
    return {
        "videos_found": len(layout.jobs),
        "listed_not_downloaded": len(layout.missing),
        "videos_prepared": len(ok),
        "encoded_now": sum(r.status == "encoded" for r in results),
        "already_done": sum(r.status == "done" for r in results),
        "failed": len(results) - len(ok),
        "hours_of_video": round(sum(r.seconds for r in ok) / 3600, 3),
        "classes": len({r.job.label for r in ok if r.job.label is not None}),
        "source_bytes": sum(r.in_bytes for r in results),
        "prepared_bytes": sum(r.out_bytes for r in ok),
        "free_bytes_before": free_before,
        "free_bytes_after": free_after,
        "wall_seconds": round(wall, 1),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m nlvideo.data.prepare", description="Re-encode a downloaded "
                       "Kinetics or Charades for fast random access; write the lists nlvideo reads.")
    p.add_argument("dataset", choices=sorted(DATA_CONFIG))
    p.add_argument("src", type=Path, help="the downloaded dataset")
    p.add_argument("dst", type=Path, help="where the prepared dataset goes (data.root for training); "
                   "outside SRC")
    p.add_argument("--short-side", type=int_at_least(2), default=256, help="short side in pixels (smaller "
                   "videos keep theirs); 256, or 320 to keep the paper's training scale jitter [256, 320] "
                   "exact")
    p.add_argument("--gop", type=int_at_least(1), default=16, help="key-frame interval: a clip decodes at "
                   "most this many frames before its first one")
    p.add_argument("--fps", type=positive_number, default=None, help="constant output frame rate (e.g. 30); "
                   "default: the source's rate, every frame kept")
    p.add_argument("--crf", type=int, choices=range(52), default=23, metavar="0..51",
                   help="x264 quality (lower: better, larger)")
    p.add_argument("--preset", choices=X264_PRESETS, default="veryfast", help="x264 speed preset")
    add_worker_options(p)
    p.add_argument("--annotations", type=Path, default=None, help="folder of the official CSVs, when not SRC")
    p.add_argument("--wait", action="store_true", help="wait for another prepare on DST to end instead of "
                   "refusing to start")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        return _prepare(argv)
    except KeyboardInterrupt:  # workers and temporary files are gone by now; DST's lock is released
        print("interrupted: the videos prepared so far are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130


def _prepare(argv: list[str] | None) -> int:
    a = _parse(argv)
    opts = EncodeOptions(a.short_side, a.gop, a.fps, a.crf, a.preset)
    dst, lock = a.dst, RunDirLock(a.dst, wait=a.wait)
    try:
        _separate(a.src, dst)
        layout = (kinetics_layout if a.dataset == "kinetics" else charades_layout)(a.src, a.annotations)
        recorded = _recorded(a.dataset, a.src, opts)
        lock.acquire()
        is_recorded = _check_recorded(dst, recorded)
    except RunDirBusy:
        print(f"error: {dst} is in use by another prepare ({lock.holder() or 'unknown holder'}): wait for "
              "it to end, pass --wait to wait for it, or choose another DST", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"error: {shown_path(str(e))}", file=sys.stderr)
        lock.release()
        return 2
    try:
        return _run(a, opts, layout, recorded if not is_recorded else None)
    finally:
        lock.release()


def _run(a: argparse.Namespace, opts: EncodeOptions, layout: Layout, record: dict | None) -> int:
    """Prepare every job of ``layout`` into ``a.dst`` (locked), write the lists and the report.
    ``record``: what to write into ``prepare.json`` once a video is there (None: it is there)."""
    dst = a.dst
    _remove_partial_files(dst)
    jobs, results = _unique(layout.jobs)
    free_before, start, disk_error = shutil.disk_usage(dst).free, time.time(), ""
    tasks = [(job, str(dst), opts) for job in jobs]
    try:
        for r in run_parallel(prepare_one, tasks, a.workers, f"prepare {a.dataset}",
                              failed=lambda r: r.status == "failed", lost=_lost, timeout=a.video_timeout):
            results.append(r)
            if record is not None and r.status != "failed":
                disk_error = _write_or_reason(dst / OPTIONS, json.dumps(record, indent=1, allow_nan=False))
                record = None
            disk_error = disk_error or (r.reason if r.disk_error else "")
            if disk_error:
                break
    finally:
        _remove_partial_files(dst)  # of the workers killed (timed out, or on Ctrl-C)
    done = [r.job for r in results if r.status != "failed"]
    report = _report(a, opts, layout, results, free_before, time.time() - start)
    report_written = False
    try:
        if not disk_error:
            report["lists"] = (write_kinetics_lists(dst, done) if a.dataset == "kinetics"
                               else write_charades_lists(a.src, dst, done, a.annotations))
        write_atomic(dst / REPORT, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        report_written = True
    except OSError as e:
        disk_error = disk_error or f"{type(e).__name__}: {e}"
    if disk_error:
        report_at = (f"report: {shown_path(dst / REPORT)}" if report_written
                     else "the report (it did not fit) follows")
        print(f"error: {shown_path(dst)} cannot take more ({shown_path(disk_error)}): stopped after "
              f"{len(results)} of {len(layout.jobs)} videos, the lists may be out of date; make room and "
              f"rerun the same command to resume; {report_at}", file=sys.stderr)
        if not report_written:
            print(json.dumps(report, ensure_ascii=True), file=sys.stderr)
        return 1
    _print_summary(a.dataset, dst, report["summary"], report)
    if not done:
        print(f"error: no video was prepared (every failure with its reason: {shown_path(dst / REPORT)})",
              file=sys.stderr)
        return 1
    return 0


def _report(a: argparse.Namespace, opts: EncodeOptions, layout: Layout, results: list[Result],
            free_before: int, wall: float) -> dict:
    """``prepare_report.json``'s content; every path and reason as text any file takes (shown_path)."""
    summary = summarise(layout, results, free_before, shutil.disk_usage(a.dst).free, wall)
    failed = sorted((r for r in results if r.status == "failed"), key=lambda r: r.job.source)
    return {
        "dataset": a.dataset, "source": shown_path(a.src.resolve()),
        "destination": shown_path(a.dst.resolve()), "options": asdict(opts), "summary": summary, "lists": [],
        "notes": [shown_path(n) for n in layout.notes],
        "failed": [{"source": shown_path(r.job.source), "reason": shown_path(r.reason)} for r in failed],
        "renamed": renamed(r.job for r in results if r.status != "failed"),
        "not_downloaded": [{"where": shown_path(w), "reason": shown_path(why)} for w, why in layout.missing],
    }


def _print_summary(dataset: str, dst: Path, s: dict, report: dict) -> None:
    print(f"prepare {dataset}: {s['videos_found']} videos found, {s['videos_prepared']} prepared "
          f"({s['encoded_now']} now, {s['already_done']} already done), {s['failed']} failed, "
          f"{s['listed_not_downloaded']} listed but not downloaded")
    print(f"  {s['hours_of_video']:.2f} h of video; videos {_size(s['source_bytes'])} -> "
          f"{_size(s['prepared_bytes'])}; free space in {shown_path(dst)}: "
          f"{_size(s['free_bytes_before'])} -> {_size(s['free_bytes_after'])}; {s['wall_seconds']:.0f} s")
    for note in report["notes"]:
        print(f"  {note}")
    for failure in report["failed"][:3]:
        print(f"  failed: {failure['source']}: {failure['reason']}")
    if report["renamed"]:
        print(f"  {len(report['renamed'])} prepared under a safe name (not UTF-8, or a tab or newline in "
              f"it), e.g. {report['renamed'][0]['source']} -> {report['renamed'][0]['output']}")
    print(f"  lists: {', '.join(report['lists'])}; every failure with its reason: {shown_path(dst / REPORT)}")
    classes = f" data.num_classes={s['classes']}" if dataset == "kinetics" and s["classes"] != 400 else ""
    print(f"  next: python -m nlvideo.data.check data={DATA_CONFIG[dataset]} data.root={shown_path(dst)}"
          f"{classes}")


if __name__ == "__main__":
    sys.exit(main())
