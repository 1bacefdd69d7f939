"""The ``edgec`` command line: a thin layer over the Python API.

Every EdgecError becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from edgec.compiler.errors import USER_ERRORS, EdgecError

COMMANDS = {}
# Modules whose @command functions make up the CLI, in help order.
COMMAND_MODULES = ["commands", "tune", "prune", "demo", "rpc"]  # edgec.compiler.cli.*


def command(name, help_text):
    """Register ``fn(args)`` as subcommand ``name``; ``fn.configure(parser)`` adds its flags."""
    def wrap(fn):
        COMMANDS[name] = (fn, help_text)
        return fn
    return wrap


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise EdgecError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:  # each registers its subcommands
        importlib.import_module(f"edgec.compiler.cli.{module}")
    p = _Parser(prog="edgec", description="Edge-model compiler on Apache TVM")
    p.add_argument("--version", action="store_true", help="print versions and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (fn, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        fn.configure(sp)
        if "--verbose" not in sp._option_string_actions:
            sp.add_argument("--verbose", action="store_true",
                            help="on a failure inside TVM, print its full message too")
        sp.set_defaults(func=fn)
    return p


def emit(args, data, text: str) -> None:
    """Print ``text`` for people, or ``data`` as JSON with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    elif not getattr(args, "quiet", False) and text:
        print(text)


def main(argv=None) -> int:
    args = None
    try:
        args = parser().parse_args(argv)
        if args.version:
            from edgec.compiler import __version__
            print(f"edgec {__version__}")
            return 0
        if not args.command:
            parser().print_help()
            return 2
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        log = getattr(e, "log", None)  # a phase's full TVM message (edgec.compiler.phases)
        if log and getattr(args, "verbose", False):
            with open(log, encoding="utf-8", errors="replace") as f:
                sys.stderr.write(f.read())
        print(f"edgec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # run as the real module, so subcommands register into it
    from edgec.compiler.cli import main as _main

    sys.exit(_main())
