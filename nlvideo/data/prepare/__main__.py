"""``python -m nlvideo.data.prepare {kinetics,charades} SRC DST``: re-encode a downloaded dataset for fast
random access and write the lists nlvideo reads (see :mod:`nlvideo.data.prepare`).

* Parallel over ``--workers`` processes (default: the CPUs this process may use), progress bar with ETA.
* Resumable: a video whose output exists is skipped (outputs appear only when complete, under a
  temporary name until then; leftovers of a killed run are deleted at start). The options are kept in
  ``DST/prepare.json``; a rerun with other options is refused rather than mixing two encodings.
* Never stops for a bad video: each failure (and each annotated video that was not downloaded) is in
  ``DST/prepare_report.json`` with its reason, beside the summary (videos in/out, failed, hours of
  video, bytes before/after, free disk space before/after), which is printed at the end too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nlvideo.data.config import available_cpus
from nlvideo.data.parallel import run_parallel
from nlvideo.data.prepare.encode import EncodeOptions, duration, encode_video
from nlvideo.data.prepare.layouts import (
    Job,
    Layout,
    charades_layout,
    kinetics_layout,
    write_charades_lists,
    write_kinetics_lists,
)

REPORT, OPTIONS = "prepare_report.json", "prepare.json"
DATA_CONFIG = {"kinetics": "kinetics400", "charades": "charades"}


@dataclass(frozen=True)
class Result:
    """One job's outcome: ``status`` is ``encoded``, ``done`` (output already there) or ``failed``."""

    job: Job
    status: str
    seconds: float = 0.0
    in_bytes: int = 0
    out_bytes: int = 0
    reason: str = ""


def prepare_one(task: tuple[Job, str, EncodeOptions]) -> Result:
    """Encode one video unless its output exists; any error becomes a ``failed`` result."""
    job, dst, opts = task
    out = Path(dst) / job.output
    try:
        in_bytes = os.path.getsize(job.source)
        if out.is_file():
            return Result(job, "done", duration(out), in_bytes, out.stat().st_size)
        encoded = encode_video(job.source, out, opts)
        return Result(job, "encoded", encoded.seconds, in_bytes, out.stat().st_size)
    except Exception as e:  # noqa: BLE001 - a bad video is reported, never fatal
        return Result(job, "failed", reason=f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")


def _check_options(dst: Path, dataset: str, opts: EncodeOptions) -> None:
    """Record the options in DST, or refuse ones that differ from those the videos there were made with."""
    wanted = {"dataset": dataset, **asdict(opts)}
    path = dst / OPTIONS
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != wanted:
            raise ValueError(f"{dst} holds videos prepared with {recorded}, not {wanted}: rerun with the "
                             "same options or choose another DST")
        return
    path.write_text(json.dumps(wanted, indent=1) + "\n")


def _remove_partial_files(dst: Path) -> None:
    """Temporary files of an interrupted run (``.<name>.<pid>.part``): never complete, never reused."""
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
            duplicates.append(Result(job, "failed", reason=f"same output as {first[job.output].source}"))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nlvideo.data.prepare", description="Re-encode a downloaded "
                                "Kinetics or Charades for fast random access; write the lists nlvideo reads.")
    p.add_argument("dataset", choices=sorted(DATA_CONFIG))
    p.add_argument("src", type=Path, help="the downloaded dataset")
    p.add_argument("dst", type=Path, help="where the prepared dataset goes (data.root for training)")
    p.add_argument("--short-side", type=int, default=256, help="short side in pixels (smaller videos keep "
                   "theirs); 256, or 320 to keep the paper's training scale jitter [256, 320] exact")
    p.add_argument("--gop", type=int, default=16, help="key-frame interval: a clip decodes at most this many "
                   "frames before its first one")
    p.add_argument("--fps", type=float, default=None, help="constant output frame rate (e.g. 30); default: "
                   "the source's rate, every frame kept")
    p.add_argument("--crf", type=int, default=23, help="x264 quality (lower: better, larger)")
    p.add_argument("--preset", default="veryfast", help="x264 speed preset")
    p.add_argument("--workers", type=int, default=available_cpus(), help="videos encoded at once")
    p.add_argument("--annotations", type=Path, default=None, help="folder of the official CSVs, when not SRC")
    a = p.parse_args(argv)
    if a.short_side < 2 or a.gop < 1 or (a.fps is not None and a.fps <= 0):
        p.error("--short-side must be >= 2, --gop >= 1 and --fps > 0")
    opts = EncodeOptions(a.short_side, a.gop, a.fps, a.crf, a.preset)
    dst = a.dst
    try:
        layout = (kinetics_layout if a.dataset == "kinetics" else charades_layout)(a.src, a.annotations)
        dst.mkdir(parents=True, exist_ok=True)
        _check_options(dst, a.dataset, opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _remove_partial_files(dst)
    jobs, results = _unique(layout.jobs)
    free_before, start = shutil.disk_usage(dst).free, time.time()
    tasks = [(job, str(dst), opts) for job in jobs]
    results += run_parallel(prepare_one, tasks, a.workers, f"prepare {a.dataset}",
                            failed=lambda r: r.status == "failed")
    done = [r.job for r in results if r.status != "failed"]
    if a.dataset == "kinetics":
        lists = write_kinetics_lists(dst, done)
    else:
        lists = write_charades_lists(a.src, dst, done, a.annotations)
    summary = summarise(layout, results, free_before, shutil.disk_usage(dst).free, time.time() - start)
    failed = sorted((r for r in results if r.status == "failed"), key=lambda r: r.job.source)
    report = {
        "dataset": a.dataset, "source": str(a.src.resolve()), "destination": str(dst.resolve()),
        "options": asdict(opts), "summary": summary, "lists": lists, "notes": layout.notes,
        "failed": [{"source": r.job.source, "reason": r.reason} for r in failed],
        "not_downloaded": [{"where": w, "reason": why} for w, why in layout.missing],
    }
    (dst / REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    _print_summary(a.dataset, dst, summary, report)
    return 0


def _print_summary(dataset: str, dst: Path, s: dict, report: dict) -> None:
    print(f"prepare {dataset}: {s['videos_found']} videos found, {s['videos_prepared']} prepared "
          f"({s['encoded_now']} now, {s['already_done']} already done), {s['failed']} failed, "
          f"{s['listed_not_downloaded']} listed but not downloaded")
    print(f"  {s['hours_of_video']:.2f} h of video; videos {_size(s['source_bytes'])} -> "
          f"{_size(s['prepared_bytes'])}; free space in {dst}: {_size(s['free_bytes_before'])} -> "
          f"{_size(s['free_bytes_after'])}; {s['wall_seconds']:.0f} s")
    for note in report["notes"]:
        print(f"  {note}")
    for failure in report["failed"][:3]:
        print(f"  failed: {failure['source']}: {failure['reason']}")
    print(f"  lists: {', '.join(report['lists'])}; every failure with its reason: {dst / REPORT}")
    classes = f" data.num_classes={s['classes']}" if dataset == "kinetics" and s["classes"] != 400 else ""
    print(f"  next: python -m nlvideo.data.check data={DATA_CONFIG[dataset]} data.root={dst}{classes}")


if __name__ == "__main__":
    sys.exit(main())
