"""The `videoats` command: one subcommand per job, each with `--help` and `--json`.

A subcommand module in `videoats.commands` (listed in COMMANDS) defines `register(subparsers)`, which adds its
parser and sets `func` (returns a JSON-able dict) and optionally `human` (turns that dict into text for people).
Errors a user can fix surface as one line on stderr and exit code 2, never as a traceback. Output paths a
command declares (`videoats.paths.declare_outputs`) are checked before it runs. A command whose result is
complete but whose last write failed returns it with an `error` entry: the result is printed, then the error
line, and the exit code is 2. Log lines of the `videoats` loggers carry the `videoats COMMAND: warning:`
prefix; the video libraries' own logs are silenced unless `--verbose` (see `videoats.data.decoding`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

from . import __version__
from .commands import (compare, convert, data_cmds, demo, eval_cmd, figures, flops, infer, models, plot, train_cmd,
                       visualize)
from .commands import prepare_kinetics
from .config import get_cfg
from .data.decoding import decord_failed
from .errors import VideoATSError
from .paths import check_declared

# in the order `videoats --help` lists them
COMMANDS = [demo, models, convert, flops, eval_cmd, train_cmd, infer, visualize, data_cmds, prepare_kinetics, plot,
            figures, compare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videoats",
        description="Adaptive Token Sampling for video transformers (TimeSformer, X-ViT).",
    )
    parser.add_argument("--version", action="version", version=f"videoats {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def split_overrides(argv: List[str]) -> Tuple[List[str], List[str]]:
    """Take `KEY VALUE` config overrides out of the command line, wherever they stand.

    A word is a key when it looks like `SECTION.KEY` (or a top-level key such as `SEED`) of the config and
    is not an existing file; the word after a key is its value whatever it looks like. So overrides can
    sit before, between or after options and videos, and argparse only sees the rest.
    """
    sections = set(get_cfg().keys())
    rest, opts, i = [], [], 0
    while i < len(argv):
        word = argv[i]
        if _KEY.match(word) and word.split(".")[0] in sections and not os.path.exists(word):
            opts += argv[i:i + 2]  # a key without a value is reported by the config loader
            i += 2
        else:
            rest.append(word)
            i += 1
    return rest, opts


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")


def emit(args, result: dict, human=None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, default=_json_default))
    elif human is not None:
        text = human(result)
        if text:
            print(text)
    else:
        print(json.dumps(result, indent=2, default=_json_default))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


VERBOSE_ENV = "VIDEOATS_VERBOSE"  # read by the decoding module, also inside DataLoader worker processes


class _OnceHandler(logging.StreamHandler):
    """`videoats CMD: warning: message` on the current stderr, each distinct message once per process
    (a bad video drawn again in every epoch, or once per clip, is reported the first time only)."""

    def __init__(self, command: str):
        super().__init__()
        self.setFormatter(logging.Formatter(f"videoats {command}: %(levelname)s: %(message)s"))
        self.seen = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # what stderr is now (tests and tqdm swap it)
        record.levelname = record.levelname.lower()
        text = record.getMessage()
        if text not in self.seen:
            self.seen.add(text)
            super().emit(record)


@contextmanager
def command_logging(command: str, verbose: bool = False) -> Iterator[None]:
    """Route the `videoats.*` loggers through one prefixed handler while a command runs (info lines only
    with --verbose), then put logging back as it was: `main` also runs inside other programs (notebooks,
    tests, tools), whose own logging must not stay switched off."""
    logger = logging.getLogger("videoats")
    saved = (list(logger.handlers), logger.level, logger.propagate, os.environ.get(VERBOSE_ENV))
    # torch.compile on a machine without CUDA warns "No CUDA runtime is found, using CUDA_HOME=..." from
    # its C++ extension builder: nothing the user can act on, so it is kept to --verbose
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    cpp_level = cpp_logger.level
    if not verbose:
        cpp_logger.setLevel(logging.ERROR)
    for handler in [h for h in logger.handlers if isinstance(h, _OnceHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_OnceHandler(command))
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)
    try:
        yield
    finally:
        cpp_logger.setLevel(cpp_level)
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        if saved[3] is None:
            os.environ.pop(VERBOSE_ENV, None)
        else:
            os.environ[VERBOSE_ENV] = saved[3]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    rest, opts = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(rest)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if opts and not getattr(args, "takes_overrides", False):
        parser.error(f"{args.command} takes no config overrides (got {' '.join(opts)})")
    args.opts = opts
    with command_logging(args.command, getattr(args, "verbose", False)):
        return _run(args)


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader (`| head`) went away


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not raise a second BrokenPipeError."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured): nothing to flush into a pipe
        pass
    finally:
        os.close(devnull)


def _run(args) -> int:
    """One parsed command: its result printed, a user's error as one line and exit code 2; a closed pipe
    (`videoats infer DIR | head`) ends the command quietly, as other command-line tools do."""
    try:
        return _run_and_emit(args)
    except BrokenPipeError:
        _quiet_stdout()
        return SIGPIPE_EXIT


def _run_and_emit(args) -> int:
    try:
        check_declared(args)
        result = args.func(args)
    except VideoATSError as e:
        print(f"videoats {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"videoats {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    emit(args, result, getattr(args, "human", None))
    if isinstance(result, dict) and result.get("error"):
        print(f"videoats {args.command}: error: {result['error']}", file=sys.stderr)
        return 2
    return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0


def test_net_main(argv=None) -> int:
    """PySlowFast-style entry (`tools/test_net.py --cfg FILE KEY VALUE ...`): `videoats eval`."""
    return main(["eval"] + list(sys.argv[1:] if argv is None else argv))


def train_net_main(argv=None) -> int:
    """PySlowFast-style entry (`tools/train_net.py --cfg FILE KEY VALUE ...`): `videoats train`."""
    return main(["train"] + list(sys.argv[1:] if argv is None else argv))


def console_main() -> None:
    """The `videoats` executable: `main`, then exit with its code. After decord failed on a file, the process
    ends without the interpreter's native teardown (output and logs flushed first): a decord reader that failed
    mid-decode can leave a native thread that aborts that teardown ("terminate called without an active
    exception", exit -6) after the command has already reported the file."""
    code = main()
    if decord_failed():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
