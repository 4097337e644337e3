"""The command-line reference: every `lookalike` command's help, as typer's own Markdown
generator writes it (what `typer lookalike.cli utils docs` prints), from the app itself."""

from __future__ import annotations

import typer
import typer.cli
import typer.main

from lookalike.cli import app

INTRO = """# Command line

One `lookalike` command, a subcommand per stage, each usable alone against the broker and store
given by [settings](settings.md). This page is generated from the command itself when the site
is built: it is what `lookalike --help` and `lookalike COMMAND --help` print.

"""


def markdown() -> str:
    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="lookalike")
    body = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="lookalike", title="`lookalike`")
    # typer's page starts at a level-1 heading: everything one level down, under this page's title
    lines = [f"#{line}" if line.startswith("#") else line for line in body.strip().splitlines()]
    return INTRO + "\n".join(lines) + "\n"
