"""The API benchmark's targets (issue 16, on a 2-core machine with the clients on the same
cores), and which of them a run met: each names a catalogue, a mode, a kind of query, a level
of clients and one figure of that level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    catalogue: str
    mode: str
    kind: str
    clients: int
    figure: str  # a key of the level's figures
    bound: float
    at_least: bool  # True: figure >= bound; False: figure <= bound

    def describe(self) -> str:
        sign = ">=" if self.at_least else "<="
        clients = f"{self.clients} client{'' if self.clients == 1 else 's'}"
        where = f"{self.catalogue} {self.mode}, {self.kind}, {clients}"
        return f"{where}: {self.figure} {sign} {self.bound:g}"


TARGETS = (
    Target("100000x1280", "exact", "image_id", 32, "ratio_vs_1_client", 6.0, True),
    Target("100000x1280", "exact", "image_id", 32, "p99_ms", 400.0, False),
    Target("100000x1280", "exact", "image_id", 1, "p50_ms", 23.0, False),
    Target("1000000x1280", "exact", "image_id", 32, "ratio_vs_1_client", 8.0, True),
    Target("100000x1280", "exact", "upload", 8, "ratio_vs_1_client", 1.5, True),
)


def check_targets(runs: list[dict[str, Any]], targets: tuple[Target, ...]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it was met (both null when the run
    did not measure that level)."""
    out = []
    for t in targets:
        run = next((r for r in runs if r["catalogue"] == t.catalogue and r["mode"] == t.mode), None)
        level = (run or {}).get("kinds", {}).get(t.kind, {}).get(f"clients_{t.clients}")
        value = None if level is None else level.get(t.figure)
        met = None if value is None else (value >= t.bound if t.at_least else value <= t.bound)
        out.append({"target": t.describe(), "value": value, "met": met})
    return out
