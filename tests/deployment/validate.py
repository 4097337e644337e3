"""Manifests against the schemas the Kubernetes API server holds them to, offline and strict
(an unknown field is an error, where the API server would drop it or refuse it).

Kubernetes' own kinds: the schemas the pinned ``kubernetes-validate`` ships, at the oldest
Kubernetes this deployment supports (``timeZone`` of CronJobs is GA from 1.27) and at the newest
the package knows. Custom resources (KEDA): their CRD's openAPIV3Schema, vendored in
deploy/kubernetes/schemas/ with its source and release."""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate

from tests.deployment.platforms import KUBE, Doc

KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


@cache
def custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((KUBE / "schemas").glob("*.json")):
        doc = json.loads(path.read_text())
        assert doc["source"].startswith("https://") and doc["release"], f"{path.name}: no source or release"
        out[(doc["apiVersion"], doc["kind"])] = _strict(doc["openAPIV3Schema"])
    return out


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema, with unknown fields refused (the API server prunes them silently) and the
    object's apiVersion/kind/metadata left to the API's own rules."""
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


def problems(doc: Doc) -> list[str]:
    """What is wrong with one manifest (empty: valid)."""
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    if key in custom_schemas():
        validator = jsonschema.Draft7Validator(custom_schemas()[key])
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            found.append(
                f"no schema for {key} in Kubernetes {version}, nor vendored in deploy/kubernetes/schemas"
            )
        except kubernetes_validate.ValidationError as exc:
            found.append(f"Kubernetes {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
    return found
