"""What every ``lookalike`` command shares: the consoles, the settings handed down through the
typer context, and the one way a command fails on a problem the user can fix."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

from config.settings import Settings

# Off a terminal (pipes, CI) lines are not wrapped to the terminal's width.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the ``lookalike`` callback read once for this process."""
    settings: Settings = ctx.find_root().obj
    return settings


def fail(message: str) -> NoReturn:
    """Print the message (never wrapped mid-sentence) and exit with status 2."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(2)
