"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``): the references are
generated from the code when the site is built, and measured figures are read from
``bench/results/``, so none of them can drift from what they describe."""

from __future__ import annotations

from typing import Any

import api_page
import cli_page
import figures
import settings_page
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page


def on_files(files: Files, config: MkDocsConfig) -> Files:
    document = api_page.openapi()
    generated = {
        "reference/cli.md": cli_page.markdown(),
        "reference/settings.md": settings_page.markdown(),
        "reference/api.md": api_page.markdown(document),
        "reference/openapi.json": api_page.openapi_json(document),
    }
    for path in figures.result_files():
        generated[f"{figures.SITE_DIR}/{path.name}"] = path.read_text()
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files, **_: Any) -> str:
    aliases = page.meta.get("figures")
    if not aliases:
        return markdown
    try:
        return figures.expand(markdown, {str(k): str(v) for k, v in aliases.items()}, page.file.src_uri)
    except figures.FigureError as exc:
        raise PluginError(str(exc)) from exc
