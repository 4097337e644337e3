"""deploy/kubernetes/ offline: every manifest valid against the API's schemas (custom resources
against their vendored CRD schemas), every reference resolving, pods non-root with resources,
KEDA following the workers' own consumer group, Spark drivers set up for Spark's Kubernetes
scheduler. Renderings come from kustomize itself (kubectl's, v5); see tests/deployment."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from config.settings import KafkaSettings
from tests.deployment.platforms import (
    COMPONENTS,
    KUBE,
    OVERLAYS,
    ROOT,
    Doc,
    base_documents,
    container_env,
    find,
    kube_run,
    kubectl,
    kustomize_version,
    pod_spec,
    rendered,
    workloads,
)
from tests.deployment.validate import problems

needs_kustomize = pytest.mark.skipif(
    kubectl() is None, reason="kubectl (with kustomize v5) is not installed: the overlays cannot be rendered"
)
# Made by the operator before `kubectl apply -k` (docs/deploy.md says how); the local overlay
# generates the Secret and has no weights volume.
OPERATOR_PROVIDED = {("Secret", "lookalike-secrets"), ("PersistentVolumeClaim", "lookalike-models")}
# The KEDA kafka scaler's trigger metadata, v2.20.2 (pkg/scalers/kafka_scaler.go: triggerMetadata)
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic",
    "topicFromEnv", "partitionLimitation", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider",
    "awsRegion",
}  # fmt: skip
SPARK_COMMANDS = (["lookalike", "spark-serve"], ["lookalike", "analyze", "--engine", "spark"])


@pytest.mark.parametrize(("path", "doc"), base_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_manifest_file_is_valid(path: str, doc: Doc) -> None:
    assert not problems(doc), f"{path} {doc['kind']}/{doc['metadata']['name']}: {problems(doc)}"


def test_the_validation_refuses_unknown_fields() -> None:
    """The checks above would catch a typo: an unknown field fails, in Kubernetes' own kinds and
    in the custom resources alike."""
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in base_documents())
    deployment = copy.deepcopy(docs[("Deployment", "lookalike-api")])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert any("livenesProbe" in p for p in problems(deployment))
    scaled = copy.deepcopy(docs[("ScaledObject", "lookalike-extract")])
    scaled["spec"]["minReplicaCont"] = 1
    assert any("minReplicaCont" in p for p in problems(scaled))


@needs_kustomize
def test_kustomize_is_version_5() -> None:
    assert kustomize_version().split(".")[0] == "5", (
        f"the manifests use kustomize v5, found {kustomize_version()}"
    )


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_is_valid(overlay: str) -> None:
    docs = rendered(overlay)
    bad = {f"{d['kind']}/{d['metadata']['name']}": problems(d) for d in docs if problems(d)}
    assert not bad, bad
    names = {f"{d['kind']}/{d['metadata']['name']}" for d in docs}
    assert {ref for _, ref in COMPONENTS.values()} <= names
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: objects in namespaces {namespaces}"


def _references(docs: tuple[Doc, ...]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for w in workloads(docs):
        pod = pod_spec(w)
        out.add(("ServiceAccount", pod.get("serviceAccountName", "default")))
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                out.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source:
                        out.add((kind, source[key]["name"]))
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    out.add(("Secret", ref["name"]))
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            out.add((spec["scaleTargetRef"].get("kind", "Deployment"), spec["scaleTargetRef"]["name"]))
        for trigger in spec.get("triggers", []) if d["kind"] == "ScaledObject" else []:
            if "authenticationRef" in trigger:
                out.add(("TriggerAuthentication", trigger["authenticationRef"]["name"]))
        if d["kind"] == "RoleBinding":
            out.add((d["roleRef"]["kind"], d["roleRef"]["name"]))
            out |= {(s["kind"], s["name"]) for s in d["subjects"]}
    return out


def secret_keys(docs: tuple[Doc, ...]) -> set[str]:
    """Every key of lookalike-secrets that something reads: workloads, KEDA, Spark's executors."""
    keys: set[str] = set()
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            keys |= set(container_env(docs, c)[1].values())
            conf = json.loads(
                next((v["value"] for v in c.get("env", []) if v["name"] == "LOOKALIKE_SPARK_CONF"), "{}")
            )
            keys |= {
                v.split(":", 1)[1]
                for k, v in conf.items()
                if k.startswith("spark.kubernetes.executor.secretKeyRef.")
            }
    for d in docs:
        if d["kind"] == "TriggerAuthentication":
            keys |= {ref["key"] for ref in d["spec"].get("secretTargetRef", [])}
    return keys


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay: str) -> None:
    docs = rendered(overlay)
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    missing = _references(docs) - present - OPERATOR_PROVIDED
    assert not missing, f"{overlay} refers to objects it does not have: {sorted(missing)}"
    for d in docs:
        if d["kind"] in ("Service", "PodDisruptionBudget"):
            selector = d["spec"]["selector"]
            selector = (
                selector.get("matchLabels", selector) if d["kind"] == "PodDisruptionBudget" else selector
            )
            chosen = [w for w in workloads(docs) if selector.items() <= _pod_labels(w).items()]
            assert chosen, f"{d['kind']}/{d['metadata']['name']} selects no pods"


def _pod_labels(workload: Doc) -> dict[str, str]:
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    return dict(spec["template"]["metadata"].get("labels", {}))


@needs_kustomize
def test_the_secret_has_every_key_that_is_read_and_the_docs_name_them() -> None:
    local = rendered("local")
    secret = find(local, "Secret", "lookalike-secrets")
    read = secret_keys(local) | secret_keys(rendered("production"))
    assert read <= set(secret["data"]), f"the local Secret lacks {sorted(read - set(secret['data']))}"
    docs = (ROOT / "docs" / "deploy.md").read_text()
    undocumented = sorted(k for k in read if f"--from-literal={k}=" not in docs)
    assert not undocumented, f"docs/deploy.md's `kubectl create secret` does not give {undocumented}"


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_resources(overlay: str) -> None:
    for w in workloads(rendered(overlay)):
        where = f"{overlay}: {w['kind']}/{w['metadata']['name']}"
        pod = pod_spec(w)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, (
            where
        )
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
            requests, limits = c["resources"].get("requests", {}), c["resources"].get("limits", {})
            assert requests.get("cpu") and requests.get("memory") and limits.get("memory"), where
            assert re.fullmatch(r"lookalike/lookalike:\d+\.\d+\.\d+(-gpu)?", c["image"]), (
                f"{where}: {c['image']}"
            )


@needs_kustomize
def test_the_production_workers_have_a_gpu_each_and_the_gpu_image() -> None:
    run = kube_run(rendered("production"), COMPONENTS["extract"][1])
    assert run.gpus == 1 and run.image.endswith("-gpu")
    assert run.env["LOOKALIKE_MODEL_DEVICE"] == "cuda"
    for name, (_, ref) in COMPONENTS.items():
        if name != "extract":
            other = kube_run(rendered("production"), ref)
            assert other.gpus == 0 and not other.image.endswith("-gpu"), name


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_follows_the_workers_own_consumer_group(overlay: str) -> None:
    docs = rendered(overlay)
    scaled = find(docs, "ScaledObject", "lookalike-extract")
    run = kube_run(docs, COMPONENTS["extract"][1])
    assert scaled["spec"]["scaleTargetRef"]["name"] == run.extra["workload"]["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta: dict[str, Any] = trigger["metadata"]
    assert trigger["type"] == "kafka" and set(meta) <= KEDA_KAFKA_METADATA, set(meta) - KEDA_KAFKA_METADATA
    prefix = "LOOKALIKE_KAFKA_"
    fields: dict[str, Any] = {
        k.removeprefix(prefix).lower(): v for k, v in run.env.items() if k.startswith(prefix)
    }
    kafka = KafkaSettings(**fields)
    assert meta["consumerGroup"] == kafka.extract_group(run.env["LOOKALIKE_MODEL_NAME"])
    assert meta["topic"] == kafka.images_topic
    assert meta["bootstrapServersFromEnv"] in run.env, (
        "KEDA reads the broker from a variable the workers lack"
    )
    assert meta["offsetResetPolicy"] == "earliest"  # as the workers' consumer (messaging/consumer.py)
    assert scaled["spec"]["maxReplicaCount"] <= kafka.partitions, (
        "more workers than partitions: some would idle"
    )
    sasl = {
        "": "none",
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert meta["sasl"] == sasl[kafka.sasl_mechanism.upper()], (
        "KEDA's sasl differs from the workers' mechanism"
    )
    assert meta["tls"] == ("enable" if kafka.security_protocol.upper() in ("SSL", "SASL_SSL") else "disable")


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_spark_drivers_are_set_up_for_the_kubernetes_scheduler(overlay: str) -> None:
    docs = rendered(overlay)
    drivers = [kube_run(docs, ref) for _, ref in COMPONENTS.values()]
    drivers = [r for r in drivers if any(r.args[: len(c)] == c for c in SPARK_COMMANDS)]
    assert len(drivers) == 2, "spark-serve and the nightly analysis"
    binding = find(docs, "RoleBinding", "lookalike-spark-driver")
    role = find(docs, "Role", binding["roleRef"]["name"])
    assert any("pods" in r["resources"] and "create" in r["verbs"] for r in role["rules"])
    for run in drivers:
        assert run.env["LOOKALIKE_SPARK_MASTER"].startswith("k8s://https://kubernetes.default.svc")
        pod, container = run.extra["pod"], run.extra["container"]
        assert pod["serviceAccountName"] in {s["name"] for s in binding["subjects"]}
        conf = json.loads(run.env["LOOKALIKE_SPARK_CONF"])
        assert conf["spark.kubernetes.container.image"] == container["image"], "executors on another image"
        assert conf["spark.kubernetes.authenticate.driver.serviceAccountName"] == pod["serviceAccountName"]
        order = [v["name"] for v in container["env"]]
        for ref in re.findall(r"\$\((\w+)\)", run.env["LOOKALIKE_SPARK_CONF"]):
            # Kubernetes substitutes $(VAR) only from variables defined before
            assert ref in order and order.index(ref) < order.index("LOOKALIKE_SPARK_CONF"), ref
        ports = {p["containerPort"] for p in container["ports"]}
        assert {int(conf["spark.driver.port"]), int(conf["spark.blockManager.port"])} <= ports
        assert conf["spark.driver.host"] == "$(POD_IP)"


@needs_kustomize
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_is_probed_scaled_and_kept_available(overlay: str) -> None:
    docs = rendered(overlay)
    run = kube_run(docs, COMPONENTS["api"][1])
    port = int(run.env["LOOKALIKE_API_PORT"])
    assert run.liveness and (run.liveness.path, run.liveness.port) == ("/healthz", port)
    assert run.readiness and (run.readiness.path, run.readiness.port) == ("/readyz", port)
    hpa = find(docs, "HorizontalPodAutoscaler", "lookalike-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lookalike-api" and hpa["spec"]["minReplicas"] >= 1
    pdb = find(docs, "PodDisruptionBudget", "lookalike-api")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] or overlay == "local"
    service = find(docs, "Service", "lookalike-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_the_vendored_crd_schemas_name_their_source() -> None:
    files = sorted((KUBE / "schemas").glob("*.json"))
    assert {f.name for f in files} == {
        "scaledobject-keda.sh-v1alpha1.json",
        "triggerauthentication-keda.sh-v1alpha1.json",
    }
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["source"].startswith("https://github.com/kedacore/keda/blob/v") and doc["openAPIV3Schema"]
