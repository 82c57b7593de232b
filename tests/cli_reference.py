"""docs/cli.md, made from `loadpilot`'s own argument parser: every verb, every option, its
default and its help. `python tests/cli_reference.py` writes it; `tests/test_cli.py` fails when
the file and the parser disagree (a verb or a flag added, renamed or removed without the docs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cli.md"

_HEAD = """# Command-line reference

`loadpilot VERB [options]`. This page is made from the command's own parser
(`python tests/cli_reference.py` writes it; a test fails when they disagree), so every verb and
option is here, with its default. How the pieces work: the README and the guides it links.

"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(a: argparse.Action) -> str:
    if isinstance(a, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return ""
    if a.default is None or a.default == argparse.SUPPRESS or a.default == []:
        return ""
    d = a.default
    if isinstance(d, Path):
        d = str(d)
    return f"`{d}`"


def _name(a: argparse.Action) -> str:
    if not a.option_strings:
        return f"`{a.metavar or a.dest.upper()}`"
    names = ", ".join(f"`{o}`" for o in a.option_strings)
    if a.nargs == 0:
        return names
    metavar = a.metavar or (f"{{{','.join(map(str, a.choices))}}}" if a.choices else a.dest.upper())
    return f"{names} `{metavar}`"


def _table(actions: list[argparse.Action]) -> list[str]:
    rows = [a for a in actions if not isinstance(a, argparse._HelpAction)]
    if not rows:
        return []
    out = ["| argument | default | what |", "|---|---|---|"]
    for a in rows:
        what = _cell((a.help or "") % {"default": a.default} if a.help else "")
        if a.required and a.option_strings:
            what = f"required. {what}".strip()
        out.append(f"| {_name(a)} | {_default(a)} | {what} |")
    return out


def render() -> str:
    from loadpilot.cli import _parser

    parser = _parser()
    lines = [_HEAD.rstrip("\n"), ""]
    lines += ["## Every verb", ""]
    lines += _table([a for a in parser._actions if a.option_strings])
    lines.append("")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {ca.dest: ca.help or "" for ca in sub._choices_actions}
    for verb, p in sub.choices.items():
        lines += [f"## loadpilot {verb}", "", _cell(helps.get(verb, "")) + ".", ""]
        positionals = [a for a in p._actions if not a.option_strings]
        options = [a for a in p._actions if a.option_strings]
        lines += _table(positionals + options)
        lines.append("")
    lines += ["## Exit codes", "", "```text", (parser.description or "").strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    DOC.write_text(render())
    print(f"wrote {DOC}")
