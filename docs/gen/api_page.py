"""The HTTP API reference: the OpenAPI document that ``api.app.create_app`` produces, rendered
to Markdown by essentials-openapi (the renderer behind neoteroi-mkdocs)."""

from __future__ import annotations

import json
from typing import Any

from openapidocs.mk.v3 import OpenAPIV3DocumentationHandler

from api.app import create_app
from api.deps import Components
from config.settings import ApiSettings

INTRO = """# HTTP API reference

Generated when the site is built from the OpenAPI document of the app itself
(`api.app.create_app`), the same one a running server shows at `/docs` and serves at
`/openapi.json`; the raw document is [openapi.json](openapi.json). The [HTTP API](../api.md)
page says what the endpoints are for.

"""


def _no_components() -> Components:
    raise RuntimeError("the documentation build only reads the app's schema")


def openapi() -> dict[str, Any]:
    """The document a server with default settings serves (no store, index or model needed)."""
    return create_app(ApiSettings(), _no_components).openapi()


def openapi_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def markdown(document: dict[str, Any]) -> str:
    rendered: str = OpenAPIV3DocumentationHandler(document, style="MKDOCS").write()
    # essentials-openapi starts with its own level-1 title: this page has one already
    body = rendered.split("-->", 1)[-1].lstrip()
    if body.startswith("# "):
        body = body.split("\n", 1)[1]
    return INTRO + body
