"""What dcos/ and deploy/kubernetes/ run, read into one shape per component so that tests can
compare the two platforms: command, settings, secrets, health checks, resources, image.

Kubernetes manifests are rendered by kustomize itself: the one built into kubectl (the machine
image of this project ships kubectl; kustomize v5). Where kubectl is missing, the tests that need
a rendering are skipped with that reason, and the base manifests are still validated file by file."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DCOS = ROOT / "dcos"
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("production", "local")
Doc = dict[str, Any]

# component: (DC/OS id, Kubernetes kind/name)
COMPONENTS = {
    "extract": ("/lookalike/extract", "Deployment/lookalike-extract"),
    "stock-sync": ("/lookalike/stock-sync", "Deployment/lookalike-stock-sync"),
    "spark-search": ("/lookalike/spark-search", "Deployment/lookalike-spark-search"),
    "api": ("/lookalike/api", "Deployment/lookalike-api"),
    "analyze": ("lookalike-analyze-nightly", "CronJob/lookalike-analyze-nightly"),
    "schema-apply": ("lookalike-schema-apply", "Job/lookalike-schema-apply"),
}


@dataclass
class Health:
    path: str
    port: int


@dataclass
class Run:
    """One component as a platform runs it."""

    args: list[str]
    env: dict[str, str]  # plain LOOKALIKE_* values
    secrets: dict[str, str]  # LOOKALIKE_* variable -> secret key
    image: str
    cpus: float
    mem_mib: int
    gpus: int
    instances: int
    liveness: Health | None = None
    readiness: Health | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- DC/OS -----------------------------------------------------------------------------------


@cache
def dcos_runs() -> dict[str, Run]:
    out: dict[str, Run] = {}
    for path in sorted(DCOS.glob("*.json")):
        doc = json.loads(path.read_text())
        for app in doc.get("apps", []):
            out[app["id"]] = _marathon(app)
        if "run" in doc:
            out[doc["id"]] = _metronome(doc)
    return out


def _split_env(env: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain values, secret names): DC/OS writes a secret's variable as {"secret": name}."""
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    secret = {k: v["secret"] for k, v in env.items() if isinstance(v, dict)}
    return plain, secret


def _marathon(app: Doc) -> Run:
    plain, secret = _split_env(app.get("env", {}))
    container = app.get("container", {})
    declared = container.get("portMappings", []) or app.get("portDefinitions", [])
    ports = [p.get("containerPort", p.get("port")) for p in declared]
    names = {p.get("name"): port for p, port in zip(declared, ports, strict=True)}
    live = [Health(h["path"], ports[h.get("portIndex", 0)]) for h in app.get("healthChecks", [])]
    ready = [Health(r["path"], names[r["portName"]]) for r in app.get("readinessChecks", [])]
    return Run(
        args=shlex.split(app["cmd"]),
        env=plain,
        secrets=secret,
        image=container["docker"]["image"],
        cpus=float(app["cpus"]),
        mem_mib=int(app["mem"]),
        gpus=int(app.get("gpus", 0)),
        instances=int(app.get("instances", 1)),
        liveness=live[0] if live else None,
        readiness=ready[0] if ready else None,
        extra={"secrets": app.get("secrets", {})},
    )


def _metronome(job: Doc) -> Run:
    run = job["run"]
    plain, secret = _split_env(run.get("env", {}))
    return Run(
        args=shlex.split(run["cmd"]),
        env=plain,
        secrets=secret,
        image=run["docker"]["image"],
        cpus=float(run["cpus"]),
        mem_mib=int(run["mem"]),
        gpus=int(run.get("gpus", 0)),
        instances=1,
        extra={
            "schedules": job.get("schedules", []),
            "restart": run.get("restart", {}),
            "secrets": run.get("secrets", {}),
        },
    )


# --- Kubernetes --------------------------------------------------------------------------------


def kubectl() -> str | None:
    return shutil.which("kubectl")


@cache
def kustomize_version() -> str:
    done = subprocess.run(
        [kubectl() or "kubectl", "version", "--client"], capture_output=True, text=True, check=True
    )
    found = re.search(r"Kustomize Version:\s*v?(\S+)", done.stdout)
    assert found, f"kubectl names no kustomize version: {done.stdout}"
    return found.group(1)


@cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    """``kubectl kustomize deploy/kubernetes/overlays/<overlay>``, parsed."""
    tool = kubectl()
    assert tool, "kubectl is not installed"
    done = subprocess.run(
        [tool, "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kustomize cannot render {overlay}: {done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def base_documents() -> list[tuple[str, Doc]]:
    """Every manifest file a kustomization lists as a resource (the overlays' patches are
    partial by design), file by file: validated without kustomize."""
    out = []
    for kustomization in sorted(KUBE.rglob("kustomization.yaml")):
        for entry in yaml.safe_load(kustomization.read_text()).get("resources", []):
            path = kustomization.parent / entry
            if path.is_file():
                for doc in yaml.safe_load_all(path.read_text()):
                    if doc:
                        out.append((str(path.relative_to(KUBE)), doc))
    return out


def find(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the rendering"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return dict(spec["template"]["spec"])


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def container_env(docs: tuple[Doc, ...], container: Doc) -> tuple[dict[str, str], dict[str, str]]:
    """(plain values, secret keys) of a container's LOOKALIKE_* variables: its ConfigMaps first
    (envFrom), then its own env, as Kubernetes resolves them."""
    plain: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            plain.update(find(docs, "ConfigMap", ref["name"]).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            plain[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            secrets[var["name"]] = var["valueFrom"]["secretKeyRef"]["key"]
    return _settings_only(plain), _settings_only(secrets)


def _settings_only(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("LOOKALIKE_")}


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number (cpu in cores, memory in MiB)."""
    s = str(text)
    units = {"m": 1e-3, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2}
    for suffix, factor in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def _probe(container: Doc, kind: str) -> Health | None:
    probe = container.get(kind)
    if not probe or "httpGet" not in probe:
        return None
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
    return Health(probe["httpGet"]["path"], int(port))


def kube_run(docs: tuple[Doc, ...], ref: str) -> Run:
    kind, name = ref.split("/")
    workload = find(docs, kind, name)
    pod = pod_spec(workload)
    (container,) = pod["containers"]
    plain, secrets = container_env(docs, container)
    resources = container.get("resources", {})
    instances = 1
    if kind == "Deployment":
        instances = int(workload["spec"].get("replicas", 1))
    return Run(
        args=list(container.get("command", [])) + list(container.get("args", [])),
        env=plain,
        secrets=secrets,
        image=container["image"],
        cpus=quantity(resources.get("requests", {}).get("cpu", 0)),
        mem_mib=int(quantity(resources.get("requests", {}).get("memory", 0))),
        gpus=int(resources.get("limits", {}).get("nvidia.com/gpu", 0)),
        instances=instances,
        liveness=_probe(container, "livenessProbe"),
        readiness=_probe(container, "readinessProbe"),
        extra={"workload": workload, "pod": pod, "container": container},
    )
