"""Annotation readers: Kinetics-style lists and folders, Charades CSVs.

Everything here runs at dataset construction, before any video is decoded, so a malformed line
or an unknown class name fails at start-up with ``ValueError("<file>:<line>: ...")`` instead of
crashing an epoch. Video files themselves are *not* checked here (a missing or broken video is a
runtime failure that the dataset skips and counts, see :mod:`nlvideo.data.dataset`).

Kinetics list (PySlowFast ``train.csv`` / ``val.csv`` form): one ``<path> <label>`` per line, the
path relative to the data root (or absolute). Fields are separated by a tab when the line has one
(then paths and class names may contain spaces), otherwise by whitespace (then exactly two fields).
Blank lines and lines starting with ``#`` are ignored. Files are read as UTF-8 (a byte-order mark
and CRLF line ends are accepted; other bytes are an error naming the line); a video listed twice is an
error naming both lines. A first line whose label is not a number and whose path has no video
extension while the others have one is a header row (``path label``, as pandas writes) and is skipped.

The labels of one list are all of one kind, decided by the list's majority; a line of another kind is
an error naming it, because a list that mixes them has no single reading (before, one odd label
turned every integer into a class name sorted as text, so ``2`` became class 4):

* integer class indices, or indices all written as decimals (``11.0``: a pandas integer column that
  held a NaN) -- a decimal that is not whole is an error. Class names come from ``classes.txt`` (one
  name per line, line *i* is index *i*) or ``classids.json`` (``{"name": index}``, the PySlowFast
  Kinetics file) when one is found, else they are the indices as strings ``"0" .. "K-1"`` with K =
  ``data.num_classes`` or the *training* list's largest index + 1;
* class names: the mapping is ``classes.txt`` / ``classids.json`` when present, else the sorted
  set of names in the *training* list.

Either way val/test use the training split's mapping: an index or name beyond it is an error, and
without a class file a list whose label kind differs from the training list's is refused.

Kinetics folders: ``<root>/<split_dir>/<class_name>/<video>`` with classes = sorted directory
names of the training split. Hidden entries (``.ipynb_checkpoints``, ``._clip.mp4``) are skipped; a
training class folder without videos is an error (it would be a class that is never trained, shifting
the indices of the classes after it); a broken symbolic link is listed, so that it is reported as an
unreadable video like any other.

Charades (``Charades_v1_train.csv`` / ``Charades_v1_test.csv``): a real CSV with a header and at
least the columns ``id`` and ``actions``; ``actions`` is ``"c092 11.90 21.20;c147 0.00 12.60"``
(class, start s, end s), possibly empty; ``length`` (seconds) is used when present. Videos are
``<root>/<video_dir>/<id><video_ext>``. Class ``cNNN`` has index ``NNN``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
_CHARADES_CLASS = re.compile(r"^c(\d{3})$")
_INTEGER = re.compile(r"[+-]?\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One Charades action segment. ``start``/``end`` are None when the timing is unusable."""

    label: int
    start: float | None
    end: float | None


@dataclass
class VideoRecord:
    """One annotated video.

    ``label`` is the class index (single-label) or None (multi-label, then see ``actions``).
    ``source`` is ``"file:line"`` of the annotation, kept for error messages.
    """

    path: str
    label: int | None = None
    actions: list[Action] = field(default_factory=list)
    length: float | None = None
    source: str = ""

    @property
    def video_labels(self) -> list[int]:
        """Sorted, de-duplicated labels of the whole video."""
        if self.label is not None:
            return [self.label]
        return sorted({a.label for a in self.actions})

    @property
    def timing_usable(self) -> bool:
        return all(a.start is not None for a in self.actions)

    def labels_in_span(self, t0: float, t1: float) -> list[int]:
        """Multi-label clip labels: actions overlapping ``[t0, t1]`` seconds.

        Falls back to all of the video's actions when any action's timing is unusable
        (negative, NaN, inverted), because then no per-clip assignment can be trusted.
        A clip that overlaps no action gets no label (an all-zero target), as in Charades.
        """
        if not self.timing_usable or not math.isfinite(t0) or not math.isfinite(t1):
            return self.video_labels
        return sorted({a.label for a in self.actions if a.start < t1 and a.end > t0})


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as text any file or terminal takes: the bytes of a file name that are not UTF-8 (a
    Latin-1 ``café``, which Python holds as surrogates) shown as ``\\xe9``, control characters escaped."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF
                   else ch.encode("unicode_escape").decode() for ch in os.fspath(path))


def _resolve(root: Path, rel: str) -> str:
    p = Path(rel)
    return str(p if p.is_absolute() else root / p)


def read_text(path: Path) -> str:
    """UTF-8 whatever the locale, without the byte-order mark that spreadsheet tools write (it would
    otherwise become part of the first path, class name or CSV column name). Line ends are kept as
    they are (``splitlines`` and the csv module handle CRLF). Other bytes (a Latin-1 export) are an
    error naming the file and line: Python's own message names neither."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8"
                         ) from None


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ValueError(f"{what} not found: {path} (check data.root and the split file names in the config)")


def read_class_file(path: Path) -> list[str]:
    """``classes.txt`` (one name per line) or ``classids.json`` (``{name: index}``)."""
    if path.suffix == ".json":
        try:
            mapping = json.loads(read_text(path))
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected {{class_name: index}}"
            ) from e
        if not isinstance(mapping, dict):
            raise ValueError(f"{path}:1: expected a JSON object {{class_name: index}}")
        names: list[str | None] = [None] * len(mapping)
        for name, idx in mapping.items():
            if not isinstance(idx, int) or not 0 <= idx < len(mapping) or names[idx] is not None:
                raise ValueError(
                    f"{path}:1: class {name!r} has index {idx!r}; "
                    f"expected unique integers 0..{len(mapping) - 1}"
                )
            names[idx] = str(name)
        return [n for n in names if n is not None]
    names = []
    for lineno, raw in enumerate(read_text(path).splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line in names:
            raise ValueError(f"{path}:{lineno}: duplicate class name {line!r}")
        names.append(line)
    if not names:
        raise ValueError(f"{path}:1: empty class list")
    return names


def find_class_file(*dirs: Path, names: Sequence[str] = ("classes.txt", "classids.json")) -> Path | None:
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _split_list_line(line: str, source: str) -> tuple[str, str]:
    parts = [p.strip() for p in line.split("\t") if p.strip()] if "\t" in line else line.split()
    if len(parts) != 2:
        raise ValueError(
            f"{source}: expected '<path> <label>' (2 fields separated by a tab or spaces; use a tab when "
            f"paths or class names contain spaces), got {len(parts)} field(s): {line!r}"
        )
    return parts[0], parts[1]


def _read_list_lines(list_file: Path) -> list[tuple[str, str, str]]:
    """(path, label, 'file:line') for each non-blank, non-comment line."""
    _require_file(list_file, "annotation list")
    out = []
    for lineno, raw in enumerate(read_text(list_file).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        source = f"{list_file}:{lineno}"
        path, label = _split_list_line(line, source)
        out.append((path, label, source))
    return out


def _label_kind(label: str) -> str:
    if _INTEGER.fullmatch(label):
        return "integer"
    if _DECIMAL.fullmatch(label):
        return "decimal number"
    return "class name"


def _is_video_path(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class LabelledList:
    """The lines of one ``<path> <label>`` list: ``rows`` are ``(path, label, "file:line")`` and
    ``kind`` is ``"index"`` (class indices, also written ``11.0``) or ``"name"`` for every row."""

    file: Path
    rows: list[tuple[str, str, str]]
    kind: str

    @property
    def label_kind(self) -> str:
        return "class names" if self.kind == "name" else "integers"


def read_labelled_list(list_file: str | Path) -> LabelledList:
    """Read a list, skip a header row, and decide its label kind (see the module docstring)."""
    list_file = Path(list_file)
    rows = _read_list_lines(list_file)
    where_videos_start = f"{list_file}:1"
    if rows and _label_kind(rows[0][1]) == "class name" and not _is_video_path(rows[0][0]) and all(
            _is_video_path(path) for path, _, _ in rows[1:]):
        path, label, source = rows.pop(0)
        log.info("%s: header row %r skipped", source, f"{path} {label}")
        where_videos_start = f"{list_file}:{int(source.rpartition(':')[2]) + 1}"
    if not rows:
        raise ValueError(f"{where_videos_start}: no videos listed; expected '<path> <label>' lines")
    kinds = [_label_kind(label) for _, label, _ in rows]
    counts = Counter(kinds)
    main = max(counts, key=lambda k: (counts[k], -kinds.index(k)))  # the majority; a tie: the first line's
    example = rows[kinds.index(main)]
    for (_, label, source), kind in zip(rows, kinds, strict=True):
        if kind != main:
            raise ValueError(f"{source}: label {label!r} is a {kind}, but this list's labels are {main}s "
                             f"(e.g. {example[1]!r} at {example[2]}); write every label of a list the same "
                             "way")
        if kind == "decimal number" and not float(label).is_integer():
            raise ValueError(f"{source}: label {label!r} is not a whole number; labels are class indices "
                             "(integers, or written as 11.0) or class names")
    return LabelledList(list_file, rows, "name" if main == "class name" else "index")


def _class_index(label: str) -> int:
    """An index label of a :class:`LabelledList`: ``7`` or ``7.0``."""
    return int(label) if _INTEGER.fullmatch(label) else int(float(label))


def kinetics_class_names(train: LabelledList, class_file: Path | None, num_classes: int | None) -> list[str]:
    """The class mapping of every split: the class file, else the training list's indices or names."""
    if class_file is not None:
        names = read_class_file(class_file)
    elif train.kind == "index":
        largest = max(_class_index(label) for _, label, _ in train.rows)
        names = [str(i) for i in range(num_classes if num_classes is not None else largest + 1)]
    else:
        names = sorted({label for _, label, _ in train.rows})
    if num_classes is not None and len(names) != num_classes:
        where = class_file if class_file is not None else f"the labels of {train.file}"
        raise ValueError(
            f"data.num_classes={num_classes} but {where} define(s) {len(names)} classes; "
            f"set data.num_classes={len(names)} or fix the class list"
        )
    return names


def read_kinetics_list(
    list_file: str | Path,
    root: str | Path,
    num_classes: int | None,
    class_file: str | Path | None = None,
    train_list_file: str | Path | None = None,
) -> tuple[list[VideoRecord], list[str]]:
    """Parse a ``<path> <label>`` list. Returns ``(records, class_names)``.

    ``class_file``: explicit ``classes.txt``/``classids.json``; when None one is looked up next to
    the list and in ``root``. ``train_list_file``: the training list, which defines the mapping when
    there is no class file (defaults to ``list_file`` itself).
    """
    list_file, root = Path(list_file), Path(root)
    listed = read_labelled_list(list_file)
    if class_file is not None:
        class_path: Path | None = Path(class_file)
        _require_file(class_path, "class file")
    else:
        class_path = find_class_file(list_file.parent, root)
    train = listed  # defines the mapping only when there is no class file
    if class_path is None and train_list_file is not None and Path(train_list_file) != list_file:
        train = read_labelled_list(train_list_file)
        if listed.kind != train.kind:
            raise ValueError(f"{listed.rows[0][2]}: this list's labels are {listed.label_kind} but the "
                             f"training list {train.file} uses {train.label_kind}; without a class file "
                             "(data.class_file) they cannot be matched")
    class_names = kinetics_class_names(train, class_path, num_classes)
    index = {name: i for i, name in enumerate(class_names)}
    records = []
    first_seen: dict[str, str] = {}
    for path, label, source in listed.rows:
        resolved = _resolve(root, path)
        if resolved in first_seen:  # twice in training weighs it double, in testing it counts twice
            raise ValueError(f"{source}: video {path!r} is listed again (first at {first_seen[resolved]}); "
                             "list each video once")
        first_seen[resolved] = source
        if listed.kind == "index":
            idx = _class_index(label)
            if not 0 <= idx < len(class_names):
                raise ValueError(
                    f"{source}: label {idx} out of range; expected an integer in [0, {len(class_names) - 1}]"
                )
        else:
            if label not in index:
                raise ValueError(
                    f"{source}: unknown class name {label!r}; expected one of the {len(class_names)} classes "
                    f"of {class_path or train.file} (e.g. {class_names[:3]})"
                )
            idx = index[label]
        records.append(VideoRecord(path=resolved, label=idx, source=source))
    return records, class_names


def _visible(directory: Path) -> list[Path]:
    """Entries of ``directory`` except hidden ones (``.ipynb_checkpoints``, macOS ``._clip.mp4``)."""
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def _is_video_entry(path: Path) -> bool:
    """A video file, or a symbolic link named like one even if broken: listing it gets it reported as
    unreadable instead of dropping it without a word."""
    return _is_video_path(path.name) and (path.is_file() or path.is_symlink())


def read_kinetics_folder(
    split_dir: str | Path, num_classes: int | None, class_names: list[str] | None = None
) -> tuple[list[VideoRecord], list[str]]:
    """``split_dir/<class_name>/<video>``. ``class_names`` (from the train split) fixes the mapping."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ValueError(f"video folder not found: {split_dir} (expected <root>/<split>/<class_name>/*.mp4)")
    dirs = sorted(d.name for d in _visible(split_dir) if d.is_dir())
    videos = {d: [f for f in sorted(_visible(split_dir / d)) if _is_video_entry(f)] for d in dirs}
    if class_names is None:
        for d in dirs:
            if not videos[d]:
                raise ValueError(f"{split_dir / d}: class folder without video files "
                                 f"({', '.join(VIDEO_EXTENSIONS)}); remove it or add its videos")
        class_names = dirs
    index = {name: i for i, name in enumerate(class_names)}
    if num_classes is not None and len(class_names) != num_classes:
        raise ValueError(
            f"data.num_classes={num_classes} but {split_dir} has {len(class_names)} class folders; "
            f"set data.num_classes={len(class_names)}"
        )
    records = []
    for d in dirs:
        if d not in index:
            raise ValueError(
                f"{split_dir / d}: unknown class folder {d!r}; expected one of the training split's classes"
            )
        records += [VideoRecord(path=str(f), label=index[d], source=str(f)) for f in videos[d]]
    if not records:
        raise ValueError(f"{split_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in class folders")
    return records, class_names


def read_exclude_list(path: str | Path, root: str | Path) -> set[str]:
    """Videos to leave out (``data.exclude_list``, as ``python -m nlvideo.data.check`` writes it): one path
    per line, relative to ``root`` or absolute, optionally followed by a tab and a reason; blank lines and
    ``#`` comments are ignored. Paths come back normalised (``os.path.normpath``), to be compared with
    the normalised paths of the records."""
    path, root = Path(path), Path(root)
    _require_file(path, "data.exclude_list")
    out = set()
    for raw in read_text(path).splitlines():
        entry = raw.split("\t", 1)[0].strip()
        if entry and not entry.startswith("#"):
            out.add(os.path.normpath(_resolve(root, entry)))
    return out


def parse_charades_actions(text: str, num_classes: int, source: str) -> list[Action]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> actions; unusable times become ``None``."""
    actions = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        fields = part.split()
        if len(fields) != 3:
            raise ValueError(f"{source}: action {part!r}: expected 'cNNN <start_s> <end_s>'")
        m = _CHARADES_CLASS.match(fields[0])
        if m is None:
            raise ValueError(f"{source}: action {part!r}: class {fields[0]!r} is not of the form cNNN")
        label = int(m.group(1))
        if label >= num_classes:
            raise ValueError(
                f"{source}: unknown class {fields[0]!r}; expected c000..c{num_classes - 1:03d} "
                f"(data.num_classes={num_classes})"
            )
        try:
            start, end = float(fields[1]), float(fields[2])
        except ValueError:
            raise ValueError(f"{source}: action {part!r}: start/end must be numbers (seconds)") from None
        usable = math.isfinite(start) and math.isfinite(end) and 0 <= start <= end
        actions.append(Action(label, start if usable else None, end if usable else None))
    return actions


def read_charades_csv(
    csv_file: str | Path, video_dir: str | Path, num_classes: int, video_ext: str = ".mp4"
) -> list[VideoRecord]:
    csv_file, video_dir = Path(csv_file), Path(video_dir)
    _require_file(csv_file, "Charades annotation CSV")
    records = []
    first_seen: dict[str, str] = {}
    with io.StringIO(read_text(csv_file), newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "actions"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{csv_file}:1: header lacks column(s) {sorted(missing)}; "
                f"expected at least 'id' and 'actions' "
                f"(got {reader.fieldnames})"
            )
        for row in reader:
            source = f"{csv_file}:{reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise ValueError(
                    f"{source}: wrong number of fields; expected {len(reader.fieldnames)} columns"
                )
            vid = row["id"].strip()
            if not vid:
                raise ValueError(f"{source}: empty 'id'")
            if vid in first_seen:
                raise ValueError(f"{source}: id {vid!r} is listed again (first at {first_seen[vid]}); "
                                 "list each video once")
            first_seen[vid] = source
            length = None
            if row.get("length", "").strip():
                try:
                    length = float(row["length"])
                except ValueError:
                    raise ValueError(
                        f"{source}: 'length' must be a number of seconds, got {row['length']!r}"
                    ) from None
            actions = parse_charades_actions(row["actions"], num_classes, source)
            records.append(
                VideoRecord(
                    path=str(video_dir / f"{vid}{video_ext}"), actions=actions, length=length, source=source
                )
            )
    if not records:
        raise ValueError(f"{csv_file}:2: no videos listed")
    return records


def charades_summary(records: Sequence[VideoRecord], csv_file: str | Path) -> str:
    """One line counting what a Charades CSV holds that can make its labels wrong without an error:
    videos without actions, actions lying (partly) after the end of their video (its ``length``
    column; the clips there carry labels of nothing that is shown) and actions with unusable times."""
    without = sum(not r.actions for r in records)
    actions = [(a, r) for r in records for a in r.actions]
    beyond = [r.source for a, r in actions if a.end is not None and r.length is not None and a.end > r.length]
    unusable = [r.source for a, r in actions if a.start is None]
    line = f"{csv_file}: {len(records)} videos, {without} without actions; {len(actions)} actions"
    for sources, what in ((beyond, "lying (partly) after the end of their video"),
                          (unusable, "with unusable times")):
        if sources:
            line += f", {len(sources)} {what} (first at {sources[0]})"
    return line


def charades_class_names(num_classes: int, class_file: str | Path | None = None) -> list[str]:
    """``c000 .. cK-1``; with ``Charades_v1_classes.txt`` (``c000 Holding some clothes``) the names."""
    names = [f"c{i:03d}" for i in range(num_classes)]
    if class_file is None:
        return names
    class_file = Path(class_file)
    _require_file(class_file, "Charades class file")
    for lineno, raw in enumerate(read_text(class_file).splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        code, _, desc = line.partition(" ")
        m = _CHARADES_CLASS.match(code)
        if m is None or int(m.group(1)) >= num_classes:
            raise ValueError(f"{class_file}:{lineno}: expected 'cNNN description' with NNN < {num_classes}")
        names[int(m.group(1))] = f"{code} {desc.strip()}".strip()
    return names


def _indices_only(names: Sequence[str]) -> bool:
    """Names ``"0" .. "K-1"``: integer labels without a class file, which name nothing."""
    return list(names) == [str(i) for i in range(len(names))]


def output_order(model_classes: Sequence[str] | None, data_classes: Sequence[str]) -> list[int] | None:
    """For each class of the data, the model output that scores it; None when output *i* is class *i*.

    A model is only right about data whose classes it was trained on: the same class names in another
    order (names in one list, integers and ``classes.txt`` in the other) are mapped by name, other names
    are a ``ValueError`` saying which differ. When either side has indices only, names cannot be compared
    and only the counts must agree. ``model_classes`` None (a checkpoint that did not store them) cannot
    be checked."""
    if model_classes is None or list(model_classes) == list(data_classes):
        return None
    if _indices_only(model_classes) or _indices_only(data_classes):
        if len(model_classes) != len(data_classes):
            raise ValueError(f"the model has {len(model_classes)} classes, the data {len(data_classes)}")
        return None
    model_set, data_set = set(model_classes), set(data_classes)
    if model_set != data_set:
        only_model = [n for n in model_classes if n not in data_set]
        only_data = [n for n in data_classes if n not in model_set]
        raise ValueError(f"the model's {len(model_classes)} classes and the data's {len(data_classes)} "
                         f"differ: only the model has {only_model[:5]}, only the data has {only_data[:5]}")
    position = {name: i for i, name in enumerate(model_classes)}
    return [position[name] for name in data_classes]
