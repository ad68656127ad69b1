"""Command line: ``python -m cxrbook run|evaluate|predict|tables|serve ...``."""

from __future__ import annotations

import argparse
import sys

from .app.cli import add_command as add_serve_command
from .workflow.cli import add_commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cxrbook", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the notebooks in order with papermill")
    r.add_argument("--profile", choices=["smoke", "full"], default="smoke")
    r.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,03")
    r.add_argument("--data-dir", help="folder with the three collections (default: $CXR_DATA_DIR)")
    r.add_argument("--output-dir", help="where outputs go (default: <repo>/outputs)")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell")
    r.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="extra notebook parameter (Python literal), e.g. -p task=three_class")
    r.set_defaults(func=lambda a: __import__("cxrbook.workflow.runner", fromlist=["main_run"]).main_run(a))

    k = sub.add_parser("kernel-install", help="register the quiet Jupyter kernel 'cxrbook' (make venv runs it)")
    k.add_argument("--prefix", help="install under this prefix (default: this Python's sys.prefix)")
    k.add_argument("--user", action="store_true", help="install for the current user instead")
    k.set_defaults(func=lambda a: __import__("cxrbook.workflow.kernel", fromlist=["main_install"]).main_install(a))

    add_commands(sub)  # predict / evaluate (cxrbook.workflow.cli imports nothing heavy at module level)

    t = sub.add_parser("tables", help="render the README's results tables from outputs/")
    t.add_argument("--outputs", help="outputs folder (default: <repo>/outputs)")
    t.add_argument("--write-readme", metavar="README",
                   help="replace the text between each <!-- tables:NAME:start/end --> marker pair")
    t.add_argument("--check", metavar="README",
                   help="exit 1 if a marked block differs from what the outputs generate")
    t.set_defaults(func=lambda a: __import__("cxrbook.reporting.tables", fromlist=["main_tables"]).main_tables(a))

    add_serve_command(sub)  # the web app (cxrbook.app.cli imports nothing heavy; the app loads when it runs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
