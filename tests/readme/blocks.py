"""The README's code blocks, and how a command from one runs: in-process through the CLI's
own `main`, in the folder tests/readme/conftest.py lays out as a user's."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

# a training command from the README runs as a short run: every other key as written
SHORT = ["steps=2", "batch_size=2", "eval.samples=2", "log_every=1", "eval.max_new_tokens=4"]


@dataclass
class Block:
    """One fenced code block: `id` is its section's heading and its number in the section."""

    id: str
    lang: str
    text: str
    line: int


def readme_blocks(path: Path = ROOT / "README.md") -> list[Block]:
    blocks, heading, n, open_at, lang, body = [], "", 0, None, "", []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if open_at is None and line.startswith("#"):
            heading, n = line.lstrip("#").strip(), 0
        elif line.startswith("```") and open_at is None:
            open_at, lang, body, n = i, line[3:].strip(), [], n + 1
        elif line.startswith("```"):
            blocks.append(Block(f"{heading} #{n}", lang, "\n".join(body) + "\n", open_at))
            open_at = None
        elif open_at is not None:
            body.append(line)
    return blocks


def commands(text: str) -> list[str]:
    """A shell block's commands, one string each (`\\` continuations joined, comments dropped)."""
    out, pending = [], ""
    for line in text.splitlines():
        pending += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if line.rstrip().endswith("\\"):
            continue
        if pending.strip() and not pending.lstrip().startswith("#"):
            out.append(pending.strip())
        pending = ""
    return out


def argv_of(command: str) -> list[str]:
    return shlex.split(command, comments=True)


@contextlib.contextmanager
def inside(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(ws: Path, argv: list[str], stdin: str = "") -> str:
    """`onellm ARGV` as the shell runs it, in-process (the CLI's own `main`), in `ws`;
    a training verb runs short. -> what it printed; a non-zero exit fails the test."""
    from onellm.cli.main import main

    if argv[0] == "train":
        argv = argv + SHORT
    out, old_stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with inside(ws), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
    finally:
        sys.stdin = old_stdin
    assert code in (0, None), f"onellm {shlex.join(argv)} exited {code}:\n{out.getvalue()}"
    return out.getvalue()


def onellm_argv(command: str) -> list[str] | None:
    """The onellm arguments of a command line (`onellm ...`, `.venv/bin/onellm ...`)."""
    argv = argv_of(command)
    if argv and re.fullmatch(r"(\S*/)?onellm", argv[0]):
        return argv[1:]
    return None
