"""Output paths are checked before any work starts, so that hours of evaluation never end in a failed write.

Every subcommand declares its output arguments once (`declare_outputs(parser, output="dir")`); the CLI checks
them right after parsing, and paths that come from a config (OUTPUT_DIR) are checked with the same functions
where the config is read. A problem is one line naming the path and what is wrong with it: it exists as a
file where a folder is needed (or the reverse), it lies under a file, or the folder cannot be written.

Writability is tested by creating (and removing) a temporary file in the nearest existing folder: that is
the only test that tells the truth for root, ACLs and read-only mounts alike (`os.access` does not).
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

from .errors import VideoATSError

KINDS = ("dir", "file")


def _nearest_existing(path: str) -> str:
    """`path` itself or its closest ancestor that exists (as anything)."""
    current = path
    while not os.path.lexists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def _writable_folder(folder: str) -> Optional[str]:
    """None when a file can be created in `folder`, else why not (in words)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".videoats-write-test-")
    except OSError as e:
        return e.strerror.lower() if e.strerror else type(e).__name__
    os.close(fd)
    os.remove(probe)
    return None


def _check_creatable(path: str, full: str, what: str) -> None:
    """Everything above `full` that exists must be a writable folder (the rest is created later)."""
    existing = _nearest_existing(os.path.dirname(full))
    if not os.path.isdir(existing):
        raise VideoATSError(f"{what} {path}: cannot be created, {existing} is a file, not a folder")
    why = _writable_folder(existing)
    if why:
        raise VideoATSError(f"{what} {path}: cannot write in {existing} ({why})")


CACHE_ENV = "VIDEOATS_HOME"


def cache_dir(*parts: str) -> str:
    """A folder under videoats' cache: `$VIDEOATS_HOME`, default `~/.cache/videoats` (the zoo's weights, the
    demo's videos). Not created here: the caller checks it like any output folder before writing."""
    root = os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "videoats"))
    return os.path.join(root, *parts)


def check_output_dir(path: str, what: str = "output folder") -> str:
    """The absolute folder `path`, after making sure results can be written there (raises VideoATSError)."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(full):
        why = _writable_folder(full)
        if why:
            raise VideoATSError(f"{what} {path}: cannot write in it ({why})")
    elif os.path.lexists(full):
        raise VideoATSError(f"{what} {path}: exists as a file; a folder is needed here (give another path)")
    else:
        _check_creatable(path, full, what)
    return full


def check_output_file(path: str, what: str = "output file") -> str:
    """The absolute file `path`, after making sure it can be written (atomically: its folder must be writable)."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(full):
        raise VideoATSError(f"{what} {path}: is a folder; give a file name")
    folder = os.path.dirname(full)
    if os.path.isdir(folder):
        why = _writable_folder(folder)
        if why:
            raise VideoATSError(f"{what} {path}: cannot write in {folder} ({why})")
    else:
        _check_creatable(path, full, what)
    return full


def check_not_an_input(path: str, inputs, what: str, reads=lambda name: True) -> None:
    """An output never replaces what the command reads: refuse `path` when it is one of `inputs` (the same file
    by any name) or an existing file inside an input folder that the command reads (`reads(name)`)."""
    full = os.path.realpath(os.path.expanduser(os.fspath(path)))
    for given in inputs:
        source = os.path.realpath(os.path.expanduser(os.fspath(given)))
        same = full == source or (os.path.exists(full) and os.path.exists(source) and os.path.samefile(full, source))
        inside = os.path.isdir(source) and os.path.isfile(full) and full.startswith(source + os.sep) and reads(full)
        if same or inside:
            raise VideoATSError(f"{what} {path}: is {'one of the inputs' if same else 'a video in the input folder'} "
                                f"{given}; name another file for the output")


def check_output(path: str, kind: str, what: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"output kind {kind!r}: use one of {KINDS}")
    return check_output_dir(path, what) if kind == "dir" else check_output_file(path, what)


def declare_outputs(parser, **kinds: str) -> None:
    """Mark arguments (by dest) as output paths of kind 'dir' or 'file'; `check_declared` checks them.

    The name in messages is the option as typed (`--output`) or the positional's metavar (`OUT`).
    """
    actions = {a.dest: a for a in parser._actions}
    specs = []
    for dest, kind in kinds.items():
        if kind not in KINDS or dest not in actions:
            raise ValueError(f"declare_outputs: no argument {dest!r} of kind {kind!r} in {parser.prog}")
        action = actions[dest]
        name = action.option_strings[-1] if action.option_strings else (action.metavar or dest.upper())
        specs.append((dest, kind, name))
    parser.set_defaults(output_paths=tuple(parser.get_default("output_paths") or ()) + tuple(specs))


def check_declared(args) -> None:
    """Check every declared output argument that has a value (called by the CLI before the command runs)."""
    for dest, kind, name in getattr(args, "output_paths", ()) or ():
        value = getattr(args, dest, None)
        if value:
            check_output(value, kind, name)


def require_data_dir(cfg) -> str:
    """DATA.PATH_TO_DATA_DIR as an existing folder, or one line saying where it was looked for and what to do.

    A relative path resolves against the current folder (as every path on a command line does), so the
    shipped synthetic configs, which name `data/synthetic`, find their data from the folder it was written in.
    """
    given = cfg.DATA.PATH_TO_DATA_DIR
    if not given:
        raise VideoATSError("DATA.PATH_TO_DATA_DIR is empty; set it to the folder with the annotation files "
                            "(e.g. `DATA.PATH_TO_DATA_DIR /data/k600` on the command line)")
    full = os.path.abspath(os.path.expanduser(given))
    if os.path.isdir(full):
        return full
    where = f"looked for {full}" + ("" if os.path.isabs(os.path.expanduser(given)) else
                                    ", relative to the current folder")
    hint = (f"write it with `videoats make-synthetic {given}`, or " if "synthetic" in given.lower() else "")
    problem = "is a file, not a folder" if os.path.exists(full) else "not found"
    raise VideoATSError(f"data folder {problem}: {given} ({where}); {hint}set DATA.PATH_TO_DATA_DIR to the folder "
                        "with the annotation files")
