"""Keep docs/cli.md's grammar table equal to the parser (``--write`` or ``--check``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.cli.grammar import update_docs
from engine.cli.main import parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engine.cli.grammar_doc --write|--check docs/cli.md``."""
    ap = argparse.ArgumentParser(prog="python -m engine.cli.grammar_doc", description=__doc__.splitlines()[0])
    ap.add_argument("doc", type=Path, help="the Markdown file holding the table between its markers")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the table into it")
    mode.add_argument("--check", action="store_true", help="exit 1 if its table is not the parser's")
    args = ap.parse_args(argv)
    text = args.doc.read_text("utf-8")
    new = update_docs(text, parser())
    if args.check:
        if new != text:
            print(
                f"{args.doc}: the grammar table is out of date: "
                f"python -m engine.cli.grammar_doc --write {args.doc}"
            )
            return 1
        return 0
    args.doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
