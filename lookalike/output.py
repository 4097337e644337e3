"""What people read: the results table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from schemas.records import QueryAnswer


def results_table(answer: QueryAnswer, title: str, expected: str | None = None) -> Table:
    table = Table(title=title, caption=f"query_id {answer.query_id}")
    for col, justify in (
        ("rank", "right"),
        ("listing", "left"),
        ("listing id", "left"),
        ("score", "right"),
        ("inventory", "right"),
        ("matched images (score)", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for rank, r in enumerate(answer.results, 1):
        name = f"[bold green]{r.listing_name}[/]" if r.listing_name == expected else r.listing_name
        stock = (
            "?" if r.inventory is None else ("[red]out of stock[/]" if r.inventory <= 0 else str(r.inventory))
        )
        images = ", ".join(f"{str(m.image_id)[:8]} ({m.score:.3f})" for m in r.images[:3])
        table.add_row(str(rank), name, str(r.listing_id), f"{r.score:.4f}", stock, images)
    return table


def print_answer(console: Console, answer: QueryAnswer, title: str, expected: str | None = None) -> None:
    console.print(results_table(answer, title, expected))
