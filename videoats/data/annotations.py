"""Read the three ways Kinetics copies list their videos, into one list of records.

Formats:
  kinetics_csv  the official `label,youtube_id,time_start,time_end,split` CSV (header required); the clip
                file is `{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`, found flat, per class
                (label as written or with `_` for spaces) or under a split folder.
  path_label    PySlowFast / mmaction lists, one `path label` a line, space or comma separated, split once
                from the right so that paths may contain spaces; label an int index or a class name.
  folders       a tree `root/<class name>/<video file>`.

The class index is the position in the sorted label names (the order of the released K600 checkpoints)
unless a labels file gives the order; the names travel with the dataset so that results can name classes.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..atomic import atomic_write_text
from ..errors import VideoATSError
from .files import VIDEO_EXTENSIONS

FORMATS = ("kinetics_csv", "path_label", "folders")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


@dataclass
class VideoRecord:
    path: str  # absolute path where the video is (or would be, when missing)
    label: int  # class index, -1 when the annotation has no label (unlabelled test lists)
    label_name: str = ""
    line: str = ""  # the annotation line it came from, so a cleaned list can be written back verbatim


@dataclass
class Annotation:
    format: str
    source: str  # the annotation file or folder
    records: List[VideoRecord]
    label_names: List[str]
    header: str = ""  # CSV header line, kept for writing a cleaned copy
    extra: Dict = field(default_factory=dict)


def detect_format(source: str) -> str:
    """folders for a directory, kinetics_csv when the first line names the official columns, else path_label."""
    if os.path.isdir(source):
        return "folders"
    if not os.path.isfile(source):
        raise VideoATSError(f"annotation file not found: {source} (set DATA.PATH_TO_DATA_DIR or the "
                            f"DATA.*_ANNOTATION key, or pass --annotation)")
    with open(source, encoding="utf-8-sig") as f:
        first = f.readline()
    fields = [c.strip().lower() for c in next(csv.reader([first]), [])]
    if "youtube_id" in fields:
        return "kinetics_csv"
    return "path_label"


def read_labels_file(path: str) -> List[str]:
    """Class names, one a line, in class-index order (DATA.LABELS_FILE, `--labels` of infer/convert)."""
    if not os.path.isfile(path):
        raise VideoATSError(f"labels file not found: {path} (give a text file with one class name a line)")
    with open(path, encoding="utf-8-sig") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise VideoATSError(f"labels file {path} is empty (give one class name a line)")
    names = [n[1:-1] if len(n) > 1 and n[0] == n[-1] == '"' else n for n in names]
    first: Dict[str, int] = {}
    for line, name in enumerate(names, start=1):
        if name in first:
            raise VideoATSError(f"labels file {path} lists {name!r} twice (entries {first[name]} and {line}); "
                                "give each class once")
        first[name] = line
    return names


def _norm(name: str) -> str:
    return name.strip().replace("_", " ").lower()


def _index_labels(names_in_data: Sequence[str], label_names: Optional[List[str]], source: str):
    """Map names to indices: the labels file order if given, else sorted order."""
    if label_names is None:
        label_names = sorted(set(names_in_data))
    exact = {n: i for i, n in enumerate(label_names)}
    loose = {_norm(n): i for i, n in enumerate(label_names)}
    mapping = {}
    for name in set(names_in_data):
        index = exact.get(name, loose.get(_norm(name)))
        if index is None:
            raise VideoATSError(f"{source}: label {name!r} is not in the labels file "
                                f"(DATA.LABELS_FILE); add it or fix the annotation")
        mapping[name] = index
    return mapping, label_names


class _ClipFinder:
    """Finds `{yid}_{start}_{end}.ext` among the layouts Kinetics copies use, trying the last hit first."""

    def __init__(self, prefix: str, split_names: Sequence[str]):
        self.prefix = prefix
        self.split_names = [s for s in dict.fromkeys(split_names) if s]
        self.last_layout = None
        self.extensions = list(VIDEO_EXTENSIONS)

    def _layouts(self, label: str, split: str):
        labels = [l for l in dict.fromkeys([label, label.replace(" ", "_")]) if l]
        out = [(lab,) for lab in labels] + [()]
        for s in [split] + self.split_names:
            if s:
                out += [(s, lab) for lab in labels] + [(s,)]
        return list(dict.fromkeys(out))

    def find(self, stem: str, label: str, split: str) -> str:
        layouts = self._layouts(label, split)
        if self.last_layout is not None:
            kind = self.last_layout
            layouts.sort(key=lambda lay: 0 if self._kind(lay, label, split) == kind else 1)
        for layout in layouts:
            for ext in self.extensions:
                path = os.path.join(self.prefix, *layout, stem + ext)
                if os.path.isfile(path):
                    self.last_layout = self._kind(layout, label, split)
                    if ext != self.extensions[0]:
                        self.extensions.remove(ext)
                        self.extensions.insert(0, ext)
                    return path
        return os.path.join(self.prefix, *layouts[0], stem + self.extensions[0])

    @staticmethod
    def _kind(layout, label, split):
        return tuple("label" if part in (label, label.replace(" ", "_")) else "split" for part in layout)


def read_kinetics_csv(source: str, prefix: str, label_names: Optional[List[str]] = None,
                      split: str = "") -> Annotation:
    with open(source, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    if not lines:
        raise VideoATSError(f"{source}: empty annotation file")
    header = lines[0]
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    missing = [c for c in KINETICS_COLUMNS[1:] if c not in columns]
    if missing:
        raise VideoATSError(f"{source}: Kinetics CSV header lacks {', '.join(missing)}; expected "
                            f"label,youtube_id,time_start,time_end,split")
    col = {c: i for i, c in enumerate(columns)}
    finder = _ClipFinder(prefix, [split, "val" if split == "validate" else "validate" if split == "val" else ""])
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = next(csv.reader([line]))
        try:
            yid = cells[col["youtube_id"]].strip()
            start, end = int(float(cells[col["time_start"]])), int(float(cells[col["time_end"]]))
        except (IndexError, ValueError):
            raise VideoATSError(f"{source} line {number}: expected label,youtube_id,time_start,time_end,split; "
                                f"got {line[:80]!r}") from None
        label = cells[col["label"]].strip() if "label" in col and col["label"] < len(cells) else ""
        row_split = cells[col["split"]].strip() if "split" in col and col["split"] < len(cells) else ""
        rows.append((f"{yid}_{start:06d}_{end:06d}", label, row_split, line))
    named = [r[1] for r in rows if r[1]]
    mapping, names = _index_labels(named, label_names, source)
    records = [VideoRecord(finder.find(stem, label, row_split), mapping.get(label, -1), label, line)
               for stem, label, row_split, line in rows]
    return Annotation("kinetics_csv", source, records, names, header=header)


def _comma_separated(lines: Sequence[str]) -> bool:
    """Comma lists when every line's last comma is followed by a label, not by part of a path."""
    body = [l.strip() for l in lines if l.strip() and not l.lstrip().startswith("#")]
    for line in body:
        if "," not in line:
            return False
        right = line.rsplit(",", 1)[1].strip()
        if not right or "/" in right or "\\" in right or right.lower().endswith(VIDEO_EXTENSIONS):
            return False
    return bool(body)


def _split_path_label(line: str, comma: bool):
    """Split once from the right, so that paths may contain spaces (or commas, in space lists)."""
    text = line.strip()
    if comma:
        path, label = text.rsplit(",", 1)
        return path.strip(), label.strip()
    parts = text.rsplit(None, 1)
    if len(parts) == 2:
        return parts[0].strip(), parts[1].strip()
    return text, ""


def read_path_label(source: str, prefix: str, label_names: Optional[List[str]] = None) -> Annotation:
    with open(source, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    pairs = []
    comma = _comma_separated(lines)
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path, label = _split_path_label(line, comma)
        if not label:
            raise VideoATSError(f"{source} line {number}: expected `path label` (space or comma separated), "
                                f"got {line[:80]!r}")
        if label.startswith('"') and label.endswith('"') and len(label) > 1:
            label = label[1:-1]
        pairs.append((path, label, line))
    if not pairs:
        raise VideoATSError(f"{source}: no `path label` lines")
    numeric = all(_is_int(label) for _, label, _ in pairs)
    records = []
    if numeric:
        top = max(int(label) for _, label, _ in pairs)
        names = label_names if label_names is not None else [str(i) for i in range(top + 1)]
        if top >= len(names):
            raise VideoATSError(f"{source}: label index {top} but the labels file has {len(names)} classes")
        for path, label, line in pairs:
            records.append(VideoRecord(_join(prefix, path), int(label), names[int(label)], line))
    else:
        mapping, names = _index_labels([label for _, label, _ in pairs], label_names, source)
        for path, label, line in pairs:
            records.append(VideoRecord(_join(prefix, path), mapping[label], label, line))
    return Annotation("path_label", source, records, list(names))


def read_folders(source: str, label_names: Optional[List[str]] = None) -> Annotation:
    classes = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)))
    found = []
    for name in classes:
        folder = os.path.join(source, name)
        for root, _, files in os.walk(folder):
            for file in sorted(files):
                if file.lower().endswith(VIDEO_EXTENSIONS):
                    found.append((os.path.join(root, file), name))
    if not found:
        raise VideoATSError(f"{source}: no videos in class folders (expected {source}/<class>/<video>)")
    mapping, names = _index_labels([n for _, n in found], label_names, source)
    records = [VideoRecord(path, mapping[name], name, f"{os.path.abspath(path)},{name}")
               for path, name in found]
    return Annotation("folders", source, records, list(names))


def read_annotation(source: str, fmt: str = "auto", prefix: str = "", labels_file: str = "",
                    split: str = "") -> Annotation:
    """Any supported annotation; relative video paths resolve under `prefix` (default: its folder)."""
    if fmt == "auto":
        fmt = detect_format(source)
    elif fmt == "folders" and not os.path.isdir(source):
        raise VideoATSError(f"annotation folder not found: {source} (ANNOTATION_FORMAT folders wants "
                            f"<dir>/<class>/<video>)")
    elif fmt != "folders" and not os.path.isfile(source):
        raise VideoATSError(f"annotation file not found: {source}")
    if fmt not in FORMATS:
        raise VideoATSError(f"unknown annotation format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
    prefix = prefix or os.path.dirname(os.path.abspath(source))
    names = read_labels_file(labels_file) if labels_file else None
    if fmt == "kinetics_csv":
        return read_kinetics_csv(source, prefix, names, split)
    if fmt == "path_label":
        return read_path_label(source, prefix, names)
    return read_folders(source, names)


def write_annotation(annotation: Annotation, records: Sequence[VideoRecord], out_path: str) -> str:
    """Write `records` in the annotation's own format, atomically (temp file in the same folder, then
    os.replace), so that an interrupted run never leaves a half-written list. Folders become a comma
    path_label list (`absolute path,class name`)."""
    buf = io.StringIO()
    if annotation.format == "kinetics_csv":
        buf.write(annotation.header + "\n")
    for record in records:
        buf.write(record.line + "\n")
    return atomic_write_text(out_path, buf.getvalue())


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _join(prefix: str, path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(prefix, path)
