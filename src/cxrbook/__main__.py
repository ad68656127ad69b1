"""Command line: ``python -m cxrbook run|evaluate|predict|tables|index|serve ...``."""

from __future__ import annotations

import argparse
import sys

from .app.cli import add_command as add_serve_command
from .workflow.cli import add_commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cxrbook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    add_commands(sub)  # run / predict / evaluate / tables (cxrbook.workflow.cli imports nothing heavy at module level)
    k = sub.add_parser("kernel-install", help="register the quiet Jupyter kernel 'cxrbook' (make venv runs it)")
    k.add_argument("--prefix", help="install under this prefix (default: this Python's sys.prefix)")
    k.add_argument("--user", action="store_true", help="install for the current user instead")
    k.set_defaults(func=lambda a: __import__("cxrbook.workflow.kernel", fromlist=["main_install"]).main_install(a))

    i = sub.add_parser("index", help="rebuild outputs/index.html from outputs/ (e.g. after working in JupyterLab)")
    i.add_argument("--outputs", help="outputs folder (default: <repo>/outputs)")
    i.set_defaults(func=lambda a: __import__("cxrbook.reporting.index", fromlist=["main_index"]).main_index(a))

    add_serve_command(sub)  # the web app (cxrbook.app.cli imports nothing heavy; the app loads when it runs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
