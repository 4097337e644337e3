"""dcos/ and deploy/kubernetes/ describe the same components: the same commands, the same settings
(names and values; only addresses and Spark's scheduler options are the platform's own), the same
secrets, health checks, resources, instances, images and schedule. Kubernetes' side is the
production overlay, rendered by kustomize. And every variable either names is a real setting."""

from __future__ import annotations

import json
import shlex

import pytest
from typer.main import get_command

from config.settings import known_variables
from lookalike.cli import app
from tests.deployment.pending import ISSUE_15_COMMANDS, ISSUE_15_VARIABLES
from tests.deployment.platforms import COMPONENTS, OVERLAYS, Run, dcos_runs, kube_run, kubectl, rendered

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (with kustomize v5) is not installed")

# Where each platform's cluster services are: the values differ by design, the names do not.
ADDRESSES = {"LOOKALIKE_STORE", "LOOKALIKE_KAFKA_BOOTSTRAP", "LOOKALIKE_SPARK_MASTER", "LOOKALIKE_SPARK_CONF"}
# Spark options that only one scheduler has (Kubernetes: executor pods, the driver's pod address;
# standalone on DC/OS: a cap on cores); every other spark.* option must agree.
SPARK_PLATFORM_KEYS = (
    "spark.kubernetes.",
    "spark.driver.host",
    "spark.driver.bindAddress",
    "spark.driver.port",
    "spark.blockManager.port",
    "spark.executor.instances",
    "spark.cores.max",
)


def _shared_spark_options(conf: str) -> dict[str, str]:
    return {k: v for k, v in json.loads(conf).items() if not k.startswith(SPARK_PLATFORM_KEYS)}


def _pair(component: str) -> tuple[Run, Run]:
    dcos_id, ref = COMPONENTS[component]
    assert dcos_id in dcos_runs(), f"dcos/ has no {dcos_id}"
    return dcos_runs()[dcos_id], kube_run(rendered("production"), ref)


def test_both_platforms_run_the_same_components() -> None:
    assert set(dcos_runs()) == {dcos_id for dcos_id, _ in COMPONENTS.values()}


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_same_command(component: str) -> None:
    dcos, kube = _pair(component)
    assert dcos.args == kube.args, (
        f"{component}: DC/OS runs {shlex.join(dcos.args)}, Kubernetes {shlex.join(kube.args)}"
    )


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_same_settings(component: str) -> None:
    dcos, kube = _pair(component)
    only_dcos, only_kube = sorted(set(dcos.env) - set(kube.env)), sorted(set(kube.env) - set(dcos.env))
    assert not only_dcos and not only_kube, (
        f"{component}: only on DC/OS {only_dcos}, only on Kubernetes {only_kube}"
    )
    differ = {k for k in dcos.env if dcos.env[k] != kube.env[k]} - ADDRESSES
    assert not differ, {k: (dcos.env[k], kube.env[k]) for k in differ}
    assert dcos.secrets == kube.secrets, f"{component}: secrets differ: {dcos.secrets} vs {kube.secrets}"
    if "LOOKALIKE_SPARK_CONF" in dcos.env:
        shared = _shared_spark_options
        assert shared(dcos.env["LOOKALIKE_SPARK_CONF"]) == shared(kube.env["LOOKALIKE_SPARK_CONF"]), component


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_same_health_checks(component: str) -> None:
    dcos, kube = _pair(component)
    assert dcos.liveness == kube.liveness, f"{component}: liveness {dcos.liveness} vs {kube.liveness}"
    assert dcos.readiness == kube.readiness, f"{component}: readiness {dcos.readiness} vs {kube.readiness}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_same_resources_instances_and_image(component: str) -> None:
    dcos, kube = _pair(component)
    assert (dcos.cpus, dcos.mem_mib, dcos.gpus) == (kube.cpus, kube.mem_mib, kube.gpus), component
    assert dcos.instances == kube.instances, component
    assert dcos.image == kube.image, component


def test_the_same_nightly_schedule() -> None:
    dcos, kube = _pair("analyze")
    (schedule,) = dcos.extra["schedules"]
    cron = kube.extra["workload"]["spec"]
    assert (schedule["cron"], schedule["timezone"]) == (cron["schedule"], cron["timeZone"])
    assert schedule["concurrencyPolicy"].lower() == cron["concurrencyPolicy"].lower() == "forbid"
    assert schedule["startingDeadlineSeconds"] == cron["startingDeadlineSeconds"]
    assert (
        dcos.extra["restart"]["activeDeadlineSeconds"] == cron["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    )
    schema_dcos, schema_kube = _pair("schema-apply")
    deadline = schema_kube.extra["workload"]["spec"]["activeDeadlineSeconds"]
    assert schema_dcos.extra["restart"]["activeDeadlineSeconds"] == deadline


def _every_variable() -> set[str]:
    names = {k for run in dcos_runs().values() for k in (*run.env, *run.secrets)}
    for overlay in OVERLAYS:
        for _, ref in COMPONENTS.values():
            run = kube_run(rendered(overlay), ref)
            names |= {*run.env, *run.secrets}
        names |= {k for d in rendered(overlay) if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    return {n for n in names if n.startswith("LOOKALIKE_")}


def test_every_variable_named_is_a_real_setting() -> None:
    known = known_variables()
    stale = sorted(ISSUE_15_VARIABLES & known)
    assert not stale, f"{stale} exist now: remove them from tests/deployment/pending.py"
    unknown = sorted(_every_variable() - known - ISSUE_15_VARIABLES)
    assert not unknown, f"the deployments set variables no settings class knows: {unknown}"


def test_every_command_exists() -> None:
    group = get_command(app)
    commands = set(group.commands)  # type: ignore[attr-defined]
    stale = sorted(ISSUE_15_COMMANDS & commands)
    assert not stale, f"{stale} exist now: remove them from tests/deployment/pending.py"
    for overlay in OVERLAYS:
        for name, (_, ref) in COMPONENTS.items():
            args = kube_run(rendered(overlay), ref).args
            assert args[0] == "lookalike", name
            if args[1] in ISSUE_15_COMMANDS:
                continue
            sub = group.commands[args[1]]  # type: ignore[attr-defined]
            rest = args[2:]
            while rest and rest[0] in getattr(sub, "commands", {}):
                sub, rest = sub.commands[rest[0]], rest[1:]
            sub.make_context(args[1], rest)  # unknown options or arguments raise here
