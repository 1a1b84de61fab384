"""`llm-maps`: one subcommand per stage (declared once in ``llm_maps.stages``), plus `demo`.

The parser is a loop over ``STAGES``: each stage's config class gives its flags and ``--help``;
the handler that runs it lives in the module of its group (``model``: needs a model; ``analysis``:
reads runs; ``service``: serves). Errors in user input exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

# `llm-maps serve`, before anything loads pyarrow: Arrow's allocator is the C library's, not its own
# mimalloc, which keeps what reading a large Parquet file needed for the life of the web process
# (~60 MB more at a million rows, after dashboard.data.release_freed_memory). Only there (the other
# verbs, and Python code importing this module, keep Arrow's own); a value set by the user wins.
if sys.argv[1:2] == ["serve"]:
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from llm_maps.config import add_arguments, from_args
from llm_maps.errors import LLMMapsError
from llm_maps.stages import STAGES

from . import analysis, model, service

HANDLERS: dict[str, Callable[[Any], int]] = {**model.COMMANDS, **analysis.COMMANDS, **service.COMMANDS}


class SuggestingParser(argparse.ArgumentParser):
    """argparse with "did you mean": a mistyped command or flag is answered with the closest ones."""

    def error(self, message: str) -> NoReturn:
        import difflib
        import re

        hint = ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=3, cutoff=0.5)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            close = [m for arg in unknown.group(1).split() if arg.startswith("-")
                     for m in difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6)]
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        super().error(message + hint)

    def parse_args(self, args: "Sequence[str] | None" = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Unknown flags are reported by the command they were given to, so its flags are suggested."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            command = subs[0].choices.get(str(getattr(ns, "command", ""))) if subs else None
            (command or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def make_parser() -> argparse.ArgumentParser:
    """The `llm-maps` parser: one subcommand per declared stage."""
    parser = SuggestingParser(
        prog="llm-maps",
        description="Maps of where a language model's prompts live, and how accuracy falls off "
                    "away from its training data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SuggestingParser)
    for name, st in STAGES.items():
        p = sub.add_parser(name, aliases=list(st.aliases), help=st.help, description=st.description or None)
        add_arguments(p, st.config, groups=st.fields, extra=st.extra, required=st.required)
        p.set_defaults(stage=name)
    return parser


def default_signals() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM ends the process, whatever the parent left: a
    signal ignored by a parent (a shell's `nohup cmd &`, some CI runners) stays ignored in its
    children, and then Ctrl-C or `kill -INT` could not stop a demo, its server or its worker.
    Called by every `llm-maps` process (the demo's server and the embedded worker are ones too)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if argv is None:  # a process of its own (not a call from Python code, e.g. a test)
        default_signals()
    st = STAGES[args.stage]
    try:
        return int(HANDLERS[st.name](from_args(st.config, args)) or 0)
    except LLMMapsError as exc:
        print(f"llm-maps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm-maps {args.command}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llm-maps info RUN | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
