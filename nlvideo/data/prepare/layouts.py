"""Where the videos and labels of a downloaded dataset are, and the lists nlvideo reads afterwards.

Kinetics, either layout (found automatically; the CSVs win when both are there):

* **official CSVs** (``train.csv``, ``validate.csv``, ``test.csv``, or ``kinetics_400_train.csv`` ...)
  with the columns ``label,youtube_id,time_start,time_end,split`` in SRC, ``SRC/annotations`` or
  ``--annotations``; the videos anywhere under SRC, named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``
  (the downloaders' name) or ``<youtube_id>.<ext>``. A row without a downloaded video is reported as
  missing; rows without a label (the test set) are counted and skipped.
* **class folders** ``SRC/<split>/<class>/<name>.<ext>`` with ``<split>`` one of train, val, validate,
  valid, test.

Outputs are ``DST/<split>/<class>/<name>.mp4`` (split ``validate``/``valid`` becomes ``val``), so DST
reads with ``data.format=kinetics_csv`` (the default) and ``kinetics_folder`` alike. The lists are
``<split>.csv`` with ``<path>\\t<class index>`` lines (tab-separated: class folders have spaces) and
``classids.json`` (``{class name: index}``, names sorted, PySlowFast's file): what
:func:`nlvideo.data.annotations.read_kinetics_list` reads.

Charades: ``SRC/Charades_v1_480/<id>.mp4`` (or ``SRC/Charades_v1``) and the official
``Charades_v1_train.csv`` / ``Charades_v1_test.csv`` (SRC or ``--annotations``). Outputs are
``DST/Charades_v1_480/<id>.mp4`` (the folder name ``data=charades`` reads whatever the resolution), the
two CSVs with every column kept and only the rows whose video was prepared, and
``Charades_v1_classes.txt`` when SRC has it.

A file or class name that a list cannot hold -- bytes that are not UTF-8 (a Latin-1 ``café.mp4`` from
an old archive), a newline or a tab -- is prepared under a safe name (:func:`safe_name`: those bytes
and characters as ``%XX``); the report names each renamed video with its original name.

Lists only name videos that were prepared (written by this run or an earlier one), so a dataset with
failures trains without a missing-file warning per epoch; the report names what was left out.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nlvideo.data.annotations import VIDEO_EXTENSIONS, read_text, shown_path

SPLIT_NAMES = {"train": "train", "val": "val", "validate": "val", "valid": "val", "test": "test"}
KINETICS_COLUMNS = {"youtube_id", "time_start", "time_end"}
CHARADES_CSVS = ("Charades_v1_train.csv", "Charades_v1_test.csv")
CHARADES_VIDEO_DIRS = ("Charades_v1_480", "Charades_v1")
CHARADES_CLASSES = "Charades_v1_classes.txt"


@dataclass(frozen=True)
class Job:
    """One video to prepare: ``source`` file, ``output`` path relative to DST, its split and class
    name (None for Charades, whose labels stay in its CSVs)."""

    source: str
    output: str
    split: str
    label: str | None = None


@dataclass
class Layout:
    """What a source folder holds: the videos to prepare; ``missing``: ``(where, reason)`` for each
    annotated video that is not there; ``notes``: other counts the summary shows."""

    jobs: list[Job]
    missing: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    """``name`` with every byte that is not UTF-8 (held by Python as a surrogate) and every character
    that is not printable (newline, tab) written as ``%XX`` (its UTF-8 bytes): a name that the lists,
    ``classids.json`` and the report can hold, and that still says what it was."""
    return "".join(ch if ch.isprintable() else
                   "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape")) for ch in name)


def renamed(jobs: Iterable[Job]) -> list[dict[str, str]]:
    """The videos prepared under another name than their source's (see :func:`safe_name`)."""
    return [{"source": shown_path(j.source), "output": j.output} for j in jobs
            if Path(j.output).stem != Path(j.source).stem]


def _videos_under(root: Path) -> list[Path]:
    """Video files under ``root`` (any depth), hidden files and folders skipped, in sorted order."""
    found = []
    for parent, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / f for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS]
    return found


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line, row)`` pairs of a CSV (UTF-8, byte-order mark and CRLF accepted)."""
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        rows = [(reader.line_num, row) for row in reader]
        return list(reader.fieldnames or []), rows


def _kinetics_job(video: Path, split: str, label: str) -> Job:
    """``<split>/<class>/<name>.mp4``; the class name as one folder name (Kinetics names have spaces and
    parentheses, never a slash); names made safe (:func:`safe_name`)."""
    label = safe_name(label.strip())
    return Job(str(video), f"{split}/{label.replace('/', '_')}/{safe_name(video.stem)}.mp4", split, label)


def _kinetics_csvs(src: Path, annotations: Path | None) -> list[Path]:
    dirs = [annotations] if annotations else [src, src / "annotations"]
    return [p for d in dirs if d.is_dir() for p in sorted(d.glob("*.csv"))
            if set(_csv_rows(p)[0]) >= KINETICS_COLUMNS]


def _split_of(row: dict[str, str], csv_file: Path) -> str | None:
    name = (row.get("split") or "").strip().lower()
    if not name:  # no split column: the file's name says it (train.csv, kinetics_400_validate.csv)
        name = re.split(r"[_\-.]", csv_file.stem.lower())[-1]
    return SPLIT_NAMES.get(name)


def kinetics_layout(src: Path, annotations: Path | None = None) -> Layout:
    """The Kinetics videos under ``src`` (see the module docstring for both layouts)."""
    csv_files = _kinetics_csvs(src, annotations)
    if csv_files:
        return _kinetics_from_csvs(src, csv_files)
    split_dirs = sorted(d for d in src.iterdir() if d.is_dir() and d.name.lower() in SPLIT_NAMES)
    if not split_dirs:
        where = annotations or f"{src} or {src / 'annotations'}"
        raise ValueError(f"{src}: no Kinetics CSVs (columns label,youtube_id,time_start,time_end,split) in "
                         f"{where} and no split folders ({', '.join(SPLIT_NAMES)}) holding class folders")
    jobs = []
    for split_dir in split_dirs:
        split = SPLIT_NAMES[split_dir.name.lower()]
        for video in _videos_under(split_dir):
            if video.parent == split_dir:
                continue  # not inside a class folder: no label
            jobs.append(_kinetics_job(video, split, video.relative_to(split_dir).parts[0]))
    return Layout(jobs)


def _kinetics_from_csvs(src: Path, csv_files: list[Path]) -> Layout:
    by_stem: dict[str, Path] = {}
    for video in _videos_under(src):
        by_stem.setdefault(video.stem, video)
    layout, unlabelled = Layout([]), 0
    for csv_file in csv_files:
        for line, row in _csv_rows(csv_file)[1]:
            where = f"{csv_file}:{line}"
            label, split = (row.get("label") or "").strip(), _split_of(row, csv_file)
            if not label or split is None:
                unlabelled += 1
                continue
            yt = row["youtube_id"].strip()
            try:
                stems = [f"{yt}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}", yt]
            except ValueError:
                layout.missing.append((where, f"time_start/time_end are not numbers: {row}"))
                continue
            video = next((by_stem[s] for s in stems if s in by_stem), None)
            if video is None:
                layout.missing.append((where, f"not downloaded: no {stems[0]}.* or {yt}.* under {src}"))
                continue
            layout.jobs.append(_kinetics_job(video, split, label))
    if unlabelled:
        layout.notes.append(f"{unlabelled} CSV rows without a label or split (the test set) skipped")
    return layout


def write_kinetics_lists(dst: Path, done: Iterable[Job]) -> list[str]:
    """``<split>.csv`` for each split with prepared videos, and ``classids.json``; returns the names."""
    done = sorted(done, key=lambda j: j.output)
    names = sorted({j.label for j in done if j.label is not None})
    index = {name: i for i, name in enumerate(names)}
    write_atomic(dst / "classids.json", json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    written = ["classids.json"]
    for split in ("train", "val", "test"):
        lines = [f"{j.output}\t{index[j.label]}\n" for j in done if j.split == split and j.label is not None]
        if lines:
            write_atomic(dst / f"{split}.csv", "".join(lines))
            written.append(f"{split}.csv")
    return written


def charades_layout(src: Path, annotations: Path | None = None) -> Layout:
    """The Charades videos of ``src`` listed in its official CSVs."""
    csv_dir = annotations or src
    video_dir = next((src / d for d in CHARADES_VIDEO_DIRS if (src / d).is_dir()), None)
    if video_dir is None:
        raise ValueError(f"{src}: no video folder ({' or '.join(CHARADES_VIDEO_DIRS)})")
    present = {p.stem: p for p in _videos_under(video_dir)}
    layout, listed = Layout([]), set()
    for name in CHARADES_CSVS:
        csv_file = csv_dir / name
        if not csv_file.is_file():
            raise ValueError(f"{csv_file} not found (the official Charades CSVs: {', '.join(CHARADES_CSVS)})")
        header, rows = _csv_rows(csv_file)
        if "id" not in header:
            raise ValueError(f"{csv_file}:1: no 'id' column (got {header})")
        split = "train" if "train" in name else "test"
        for line, row in rows:
            vid = row["id"].strip()
            if vid in listed:
                continue  # the reader reports duplicate ids; one video is prepared once
            listed.add(vid)
            if vid in present:
                layout.jobs.append(Job(str(present[vid]), f"{CHARADES_VIDEO_DIRS[0]}/{vid}.mp4", split))
            else:
                layout.missing.append((f"{csv_file}:{line}", f"not downloaded: no {vid}.* in {video_dir}"))
    unlisted = len(present.keys() - listed)
    if unlisted:
        layout.notes.append(f"{unlisted} videos in {video_dir} are in neither CSV: not prepared")
    return layout


def write_charades_lists(src: Path, dst: Path, done: Iterable[Job], annotations: Path | None = None
                         ) -> list[str]:
    """The official CSVs with only the rows of prepared videos (every column kept), and the class list."""
    csv_dir = annotations or src
    prepared = {Path(j.output).stem for j in done}
    for name in CHARADES_CSVS:
        header, rows = _csv_rows(csv_dir / name)
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for _, row in rows if row["id"].strip() in prepared)
        write_atomic(dst / name, out.getvalue())
    written = list(CHARADES_CSVS)
    if (csv_dir / CHARADES_CLASSES).is_file():
        write_atomic(dst / CHARADES_CLASSES, read_text(csv_dir / CHARADES_CLASSES))
        written.append(CHARADES_CLASSES)
    return written


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` under a temporary name renamed when complete; on failure (disk full) the
    temporary file is removed and ``path`` is as before."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
