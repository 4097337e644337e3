"""Measured figures in the documentation's prose and tables, read from ``bench/results/*.json``
when the site is built, so a figure cannot drift from its measurement.

A page names the result files it quotes in its front matter, each under a short alias::

    figures:
      s100k: search-cpu-intel-xeon-2-cores-100k

and quotes a value as ``{{ s100k.exact.one_query.p50_ms }}``, optionally formatted:
``{{ s100k.load.peak_rss_bytes | /1e9 .2f }}`` (scaled, then a Python format spec; ``,``
groups thousands with spaces). ``{{ s100k }}`` alone links the file. A path steps into objects
by key (``"0.95"`` quoted when the key holds a dot) and into lists by index (``runs.0``) or by a member's
field (``runs[model=efficientnet_lite0]``); ``[max]`` / ``[min]`` take the largest or smallest of an
object's or a list's values. A missing file, alias or key fails the build.
"""

from __future__ import annotations

import json
import posixpath
import re
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
SITE_DIR = "bench/results"  # where the result files are published in the site
QUOTE = re.compile(r"\{\{\s*([A-Za-z_][\w-]*)((?:\.|\[)[^|}]*)?(?:\|\s*([^}]*?))?\s*\}\}")
SEGMENT = re.compile(r'"([^"]*)"|([^.\[\]"]+)|\[(\w+)=([^\]]+)\]|\[(\d+)\]|\[(max|min)\]')


class FigureError(ValueError):
    """A quoted figure that the result files do not hold."""


@cache
def result(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FigureError(f"no result file bench/results/{name}.json")
    return json.loads(path.read_text())


def result_files() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def lookup(value: Any, path: str, where: str) -> Any:
    pos = 0
    path = path.strip().lstrip(".")
    while pos < len(path):
        m = SEGMENT.match(path, pos)
        if m is None:
            raise FigureError(f"{where}: cannot read the path at {path[pos:]!r}")
        quoted, name, field, wanted, index, extreme = m.groups()
        if extreme is not None:
            values = list(value.values()) if isinstance(value, dict) else value
            if not isinstance(values, list) or not values:
                raise FigureError(f"{where}: [{extreme}] of {value!r}")
            value = max(values) if extreme == "max" else min(values)
        elif index is not None:
            if not isinstance(value, list) or int(index) >= len(value):
                raise FigureError(f"{where}: no item {index}")
            value = value[int(index)]
        elif field is not None:
            found = [v for v in value if isinstance(v, dict) and str(v.get(field)) == wanted]
            if len(found) != 1:
                raise FigureError(f"{where}: {len(found)} items with {field}={wanted}")
            value = found[0]
        elif isinstance(value, list) and name is not None and name.isdigit():
            if int(name) >= len(value):
                raise FigureError(f"{where}: no item {name}")
            value = value[int(name)]
        else:
            key = quoted if quoted is not None else name
            if not isinstance(value, dict) or key not in value:
                raise FigureError(f"{where}: no key {key!r}")
            value = value[key]
        pos = m.end()
        if pos < len(path) and path[pos] == ".":
            pos += 1
    return value


def formatted(value: Any, spec: str | None, where: str) -> str:
    spec = (spec or "").strip()
    scale = re.match(r"([*/])\s*([0-9.e+-]+)\s*", spec)
    if scale:
        if not isinstance(value, int | float):
            raise FigureError(f"{where}: cannot scale {value!r}")
        factor = float(scale.group(2))
        value = value * factor if scale.group(1) == "*" else value / factor
        spec = spec[scale.end() :]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if spec:
        if isinstance(value, float) and re.fullmatch(r",?\.\d+f", spec):
            # rounded half up, as a reader would (format() rounds 272.5 to 272)
            places = Decimal(1).scaleb(-int(spec.rsplit(".", 1)[1][:-1]))
            value = Decimal(repr(value)).quantize(places, rounding=ROUND_HALF_UP)
        try:
            return format(value, spec).replace(",", " ")
        except (TypeError, ValueError) as exc:
            raise FigureError(f"{where}: format {spec!r} of {value!r}: {exc}") from exc
    if isinstance(value, int) and abs(value) >= 10_000:
        return format(value, ",").replace(",", " ")
    if isinstance(value, list | dict):
        raise FigureError(f"{where}: quotes a whole {type(value).__name__}, not a figure")
    return str(value)


def link(name: str, page_uri: str) -> str:
    target = posixpath.relpath(f"{SITE_DIR}/{name}.json", posixpath.dirname(page_uri) or ".")
    return f"[`{name}.json`]({target})"


def expand(markdown: str, aliases: dict[str, str], page_uri: str) -> str:
    """``markdown`` with every quoted figure replaced by its value."""

    def one(m: re.Match[str]) -> str:
        alias, path, spec = m.groups()
        where = f"{page_uri}: {m.group(0)}"
        if alias not in aliases:
            raise FigureError(f"{where}: alias {alias!r} is not in the page's `figures`")
        if not path:
            result(aliases[alias])
            return link(aliases[alias], page_uri)
        return formatted(lookup(result(aliases[alias]), path, where), spec, where)

    return QUOTE.sub(one, markdown)
