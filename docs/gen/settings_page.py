"""The settings reference: every ``LOOKALIKE_*`` variable with its type, default and
description, read from the settings classes (``config/settings.py``, ``config/cassandra.py``)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from config.settings import SETTINGS_CLASSES, CoreSettings

INTRO = """# Settings

Every component reads its settings from `LOOKALIKE_*` environment variables (Marathon and
Kubernetes pass configuration as environment), one pydantic-settings class per component,
built once per process at its entry point and handed down. A `LOOKALIKE_*` variable that no
component knows is an error, so a typo cannot silently fall back to a default. Secrets
(`SecretStr`) never show in a repr, a log line or an error message. Lists are comma-separated;
dictionaries are JSON.

This page is generated from the settings classes when the site is built.

"""

_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `int`, `"a" | "b"`, `list of str`, `path or unset`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (types.UnionType, typing.Union):
        named = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or unset" if type(None) in args else "")
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return "JSON object"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation)).lower()


def default_text(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "" or value == [] or value == {}:
        return "(empty)" if value is not None else "(unset)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def bounds_text(info: FieldInfo) -> str:
    parts = [
        f"{sign} {getattr(item, attr)}"
        for item in info.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(item, kind)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def variable(cls: type[BaseModel], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def section(cls: type[BaseSettings]) -> str:
    doc = " ".join((cls.__doc__ or "").split())
    prefix = str(cls.model_config.get("env_prefix", ""))
    source = cls.__module__.replace(".", "/") + ".py"
    rows = [
        f"## {cls.__name__}\n",
        f"{doc} Variables `{prefix}*`, from `{source}`.\n",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for field, info in cls.model_fields.items():
        description = " ".join((info.description or "").split())
        if not description:
            raise ValueError(f"{cls.__name__}.{field} has no description: give it a docstring")
        kind = type_name(info.annotation) + bounds_text(info)
        rows.append(f"| `{variable(cls, field)}` | {kind} | {default_text(info)} | {description} |")
    return "\n".join(rows) + "\n"


def markdown() -> str:
    first = sorted(SETTINGS_CLASSES, key=lambda cls: cls is not CoreSettings)  # the core first
    return INTRO + "\n".join(section(cls) for cls in first)
