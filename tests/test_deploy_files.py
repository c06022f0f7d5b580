"""The deployment files say what the code does: Kubernetes manifests valid against the
Kubernetes schema, KEDA's objects pointing at the right things, the systemd unit draining
on stop, and worker.env.example listing every worker setting with its default."""

from __future__ import annotations

import configparser

import yaml
from conftest import REPO
from kubernetes_validate import utils

from encoder_worker.cli import build_parser
from encoder_worker.settings import WORKER_ENV_PREFIX, WorkerSettings

DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.33"


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    [found] = [doc for doc in docs if doc["kind"] == kind]
    return found


def test_kubernetes_objects_match_the_kubernetes_schema():
    core = [doc for name in ("worker-deployment.yaml", "keda-scaledobject.yaml")
            for doc in manifests(name) if not doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in core} == {"ConfigMap", "Deployment", "Secret"}
    for doc in core:
        # strict: unknown fields are errors too (a misspelt key is silently ignored by
        # kubectl apply otherwise).
        utils.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_worker_deployment_drains_and_probes_with_real_commands():
    docs = manifests("worker-deployment.yaml")
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    # Long enough for an encode to finish after SIGTERM (Celery's warm shutdown).
    assert pod["terminationGracePeriodSeconds"] >= 600
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    parser = build_parser()
    parser.parse_args(container["args"])  # a real subcommand
    probe = container["livenessProbe"]["exec"]["command"]
    assert probe[0] == "encoder-worker"
    parser.parse_args(probe[1:])
    config = by_kind(docs, "ConfigMap")["data"]
    for name in config:
        assert name.startswith((WORKER_ENV_PREFIX, "FARM_S3_")), name
        if name.startswith(WORKER_ENV_PREFIX):
            assert name.removeprefix(WORKER_ENV_PREFIX).lower() in WorkerSettings.model_fields
    # Settings are read the way the worker reads them (a storage roots list, a port).
    settings = WorkerSettings.model_validate(
        {name.removeprefix(WORKER_ENV_PREFIX).lower(): value for name, value in config.items()
         if name.startswith(WORKER_ENV_PREFIX)})
    assert settings.storage_roots() == ["s3://robot-data"]
    assert str(settings.metrics_port) == container["ports"][0]["containerPort"].__str__()


def test_keda_scales_the_worker_deployment_on_its_queue():
    docs = manifests("keda-scaledobject.yaml")
    scaled = by_kind(docs, "ScaledObject")
    deployment = by_kind(manifests("worker-deployment.yaml"), "Deployment")
    config = by_kind(manifests("worker-deployment.yaml"), "ConfigMap")["data"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [trigger] = scaled["spec"]["triggers"]
    # KEDA's Redis list scaler: type redis, listName, listLength (a string), address.
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == config["FARM_WORKER_QUEUE"]
    assert int(trigger["metadata"]["listLength"]) >= 1
    assert set(trigger["metadata"]) <= {"address", "host", "port", "listName", "listLength",
                                        "activationListLength", "databaseIndex",
                                        "enableTLS", "unsafeSsl"}
    auth = by_kind(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    secret = by_kind(docs, "Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    # Running encodes are invisible to the list scaler: scale down only after a quiet spell.
    assert scaled["spec"]["cooldownPeriod"] >= 300


def test_the_systemd_unit_drains_on_stop_and_restarts_on_a_crash():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "encoder-worker.service").read_text())
    service = unit["Service"]
    program, command = service["ExecStart"].split()
    assert program.endswith("/bin/encoder-worker") and command == "run"
    # SIGTERM to the main process only: Celery's warm shutdown lets running encodes finish.
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["TimeoutStopSec"] == "15min"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # bad settings: a restart cannot help
    assert service["EnvironmentFile"] == "/etc/encoder-worker/worker.env"


def env_file(name: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_worker_env_example_lists_every_setting_with_its_default():
    values = env_file("worker.env.example")
    for name, field in WorkerSettings.model_fields.items():
        key = f"{WORKER_ENV_PREFIX}{name.upper()}"
        assert key in values, f"{key} is missing from deploy/worker.env.example"
        default = field.get_default(call_default_factory=True)
        if default is None or default == []:
            assert values[key] == "", key
        else:  # read as the worker reads it: "60" is the float 60.0
            written = WorkerSettings.model_validate({name: values[key]})
            assert getattr(written, name) == default, key
