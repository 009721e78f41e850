"""Offline checks of the Helm chart in k8s/baton.

The chart is rendered and linted by Helm 4 itself (PyPI helm-python-sdk, which embeds Helm as a
library: no helm binary, no cluster, no network). Every rendered object is validated strictly against
the Kubernetes 1.30 schemas shipped in kubernetes-validate, RayCluster/RayJob/RayService objects
against the KubeRay CRD schemas in shared/k8s-schemas/kuberay (with unknown fields rejected, as
`kubectl apply` does), and the pod templates inside them as Kubernetes PodTemplates. The head
container's start script is run for real by bash with stand-in `ray` and `baton` commands, and the
TLS probe checker is run against a real local gRPC server.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import time
import types
from concurrent import futures
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import self_signed_cert

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "k8s" / "baton"
CI_VALUES = CHART / "ci" / "ci-values.yaml"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "k8s-schemas" / "kuberay"
KUBE_VERSION = "1.30"
RELEASE = "demo"
NAMESPACE = "serving"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def ci_values() -> dict:
    return yaml.safe_load(CI_VALUES.read_text())


def render(chart, values: dict | None = None, name: str = RELEASE) -> list[dict]:
    """Render the chart and return its objects, each validated (see validate_object)."""
    manifests = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.load_all(text, Loader=YAML_LOADER):
            if doc:
                validate_object(doc, path)
                objects.append(doc)
    return objects


def strict_schema(node):
    """Copy of an OpenAPI schema in which objects with declared properties reject unknown fields."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.fail(
            f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS}: the tests expect the shared/ folder "
            "beside the repository (shared/k8s-schemas/kuberay/ray.io_*.yaml)"
        )
    path = KUBERAY_SCHEMAS / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD schema for {kind} missing: {path}")
    crd = yaml.load(path.read_text(), Loader=YAML_LOADER)
    versions = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert versions, f"{path} has no v1 version"
    schema = strict_schema(versions[0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def kube_validate(obj: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(
            f"{where}: {obj['kind']} invalid for Kubernetes {KUBE_VERSION} at {path}: {error.message}"
        )
    except kubernetes_validate.SchemaNotFoundError as error:
        pytest.fail(f"{where}: {error.message}")


# The part of the Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1) the chart renders, from
# its API reference; unknown fields are rejected, as a strict apply would.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": r"^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$",
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_object(obj: dict, where: str) -> None:
    kind = obj.get("kind")
    if kind == "ServiceMonitor":
        errors = list(jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA).iter_errors(obj))
        assert not errors, f"{where}: ServiceMonitor: {[e.message for e in errors[:5]]}"
        return
    if obj.get("apiVersion", "").startswith("ray.io/"):
        assert obj["apiVersion"] == "ray.io/v1", f"{where}: KubeRay objects must be ray.io/v1"
        assert kind in CRD_FILES, f"{where}: unknown KubeRay kind {kind}"
        errors = sorted(crd_validator(kind).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            lines = [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors[:10]]
            pytest.fail(f"{where}: {kind} does not match the KubeRay CRD:\n" + "\n".join(lines))
        for label, template in pod_templates(obj):
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "check"},
                "template": template,
            }
            kube_validate(pod_template, f"{where} ({label} pod template)")
    else:
        kube_validate(obj, where)


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    spec = obj["spec"]
    if obj["kind"] == "RayService":
        spec = spec["rayClusterConfig"]
    elif obj["kind"] == "RayJob":
        spec = spec.get("rayClusterSpec") or {}
    found = []
    if "headGroupSpec" in spec:
        found.append(("head", spec["headGroupSpec"]["template"]))
    for group in spec.get("workerGroupSpecs", []):
        found.append((group["groupName"], group["template"]))
    return found


def one(objects: list[dict], kind: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def ray_cluster(objects: list[dict]) -> dict:
    return one(objects, "RayCluster")


def head_container(objects: list[dict]) -> dict:
    containers = ray_cluster(objects)["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    return containers[0]


def head_pod_spec(objects: list[dict]) -> dict:
    return ray_cluster(objects)["spec"]["headGroupSpec"]["template"]["spec"]


def worker_group(objects: list[dict], name: str) -> dict:
    groups = {g["groupName"]: g for g in ray_cluster(objects)["spec"]["workerGroupSpecs"]}
    assert name in groups, f"no worker group {name}: {sorted(groups)}"
    return groups[name]


def head_script(objects: list[dict]) -> str:
    container = head_container(objects)
    assert container["command"] == ["/bin/bash", "-c", "--"]
    assert len(container["args"]) == 1
    return container["args"][0]


def serve_argv(objects: list[dict]) -> list[str]:
    """Arguments of `baton serve` as the shell in the head container would pass them."""
    script = head_script(objects)
    match = re.search(r"^baton serve (.*?) &$", script.replace("\\\n", " "), re.M | re.S)
    assert match, f"no `baton serve ... &` line in the head script:\n{script}"
    return shlex.split(match.group(1))


def flags(argv: list[str]) -> dict[str, str | None]:
    """--flag value pairs of an argv (a flag followed by another flag maps to None)."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        assert arg.startswith("--"), f"stray argument {arg!r} in {argv}"
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[arg] = argv[i + 1]
            i += 2
        else:
            out[arg] = None
            i += 1
    return out


def merged(*layers: dict) -> dict:
    """Deep merge of value overrides (later wins)."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def render_fails(chart, values: dict) -> str:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


# --------------------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("values_file", [None, CI_VALUES], ids=["default", "ci"])
def test_lint_strict_is_clean(values_file):
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_default_values_render_valid_objects(chart):
    objects = render(chart)
    assert kinds(objects) == ["ConfigMap", "RayCluster", "Secret", "Service", "ServiceAccount"]
    cluster = ray_cluster(objects)
    assert cluster["metadata"]["name"] == f"{RELEASE}-baton"
    assert cluster["metadata"]["namespace"] == NAMESPACE
    assert sorted(g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]) == ["decode", "prefill"]
    assert flags(serve_argv(objects))["--device"] == "cuda"


def test_ci_values_render_valid_objects(chart):
    objects = render(chart, ci_values())
    assert kinds(objects) == [
        "ConfigMap",
        "ConfigMap",
        "PodDisruptionBudget",
        "RayCluster",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    assert ray_cluster(objects)["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    assert flags(serve_argv(objects))["--device"] == "cpu"


def test_crd_validation_rejects_unknown_and_mistyped_fields(chart):
    """The strict CRD check can fail: a misspelt field and a non-string rayStartParam are caught."""
    cluster = ray_cluster(render(chart))
    validator = crd_validator("RayCluster")
    assert not list(validator.iter_errors(cluster))
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["rayStartParam"] = {}
    assert list(validator.iter_errors(typo))
    mistyped = copy.deepcopy(cluster)
    mistyped["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    assert list(validator.iter_errors(mistyped))


def test_long_release_name_gives_a_valid_raycluster_name(chart):
    name = "a" * 53
    objects = render(chart, name=name)
    cluster_name = ray_cluster(objects)["metadata"]["name"]
    assert len(cluster_name) <= 53  # KubeRay's limit: it appends "-head-svc" for a 63-char service
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", cluster_name)


# --------------------------------------------------------------------------- worker groups


GROUPS_VALUES = {
    "workerGroups": {
        "prefill": {"replicas": 3, "gpus": 2, "workers": 6, "gpusPerWorker": 1, "cpusPerWorker": 2},
        "decode": {"replicas": 2, "gpus": 4, "workers": 2, "gpusPerWorker": 4, "cpusPerWorker": 3},
    },
    "head": {"gpus": 0},
}


def test_worker_counts_and_gpus_reach_the_right_groups(chart):
    objects = render(chart, GROUPS_VALUES)
    for name, replicas, gpus in [("prefill", 3, 2), ("decode", 2, 4)]:
        group = worker_group(objects, name)
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (replicas,) * 3
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == name
        # GPU nodes are usually tainted; the default tolerations let the group schedule there.
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"][
            "spec"
        ]["tolerations"]

    serve = flags(serve_argv(objects))
    assert serve["--prefill-workers"] == "6"
    assert serve["--decode-workers"] == "2"
    assert serve["--prefill-num-gpus"] == "1"
    assert serve["--decode-num-gpus"] == "4"
    assert serve["--prefill-num-cpus"] == "2"
    assert serve["--decode-num-cpus"] == "3"

    head = head_container(objects)
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert ray_cluster(objects)["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_group_placement_settings_are_per_group(chart):
    values = {
        "image": {"repository": "reg.example/baton", "tag": "1.2.3"},
        "workerGroups": {
            "prefill": {
                "nodeSelector": {"pool": "h100"},
                "tolerations": [],
                "image": {"tag": "prefill-build"},
            },
            "decode": {"nodeSelector": {"pool": "l4"}, "affinity": {"nodeAffinity": {}}},
        },
    }
    objects = render(chart, values)
    prefill = worker_group(objects, "prefill")["template"]["spec"]
    decode = worker_group(objects, "decode")["template"]["spec"]
    assert prefill["nodeSelector"] == {"pool": "h100"}
    assert "tolerations" not in prefill
    assert prefill["containers"][0]["image"] == "reg.example/baton:prefill-build"
    assert decode["nodeSelector"] == {"pool": "l4"}
    assert decode["affinity"] == {"nodeAffinity": {}}
    assert decode["containers"][0]["image"] == "reg.example/baton:1.2.3"
    assert head_container(objects)["image"] == "reg.example/baton:1.2.3"


def test_custom_resources_on_the_groups_match_the_serve_flags(chart):
    for values in ({}, ci_values(), {"workerGroups": {"decode": {"rayResource": "decode_pool"}}}):
        objects = render(chart, values)
        serve = flags(serve_argv(objects))
        names = {}
        for role in ("prefill", "decode"):
            demand = json.loads(serve[f"--{role}-resources"])
            raw = worker_group(objects, role)["rayStartParams"]["resources"]
            # KubeRay runs `ray start ... --resources=<value>` through bash: the shell must hand
            # Ray plain JSON, and KubeRay's own parser trims the quotes and reads JSON too.
            (shell_word,) = shlex.split(f"--resources={raw}")
            advertised = json.loads(shell_word.removeprefix("--resources="))
            assert advertised == json.loads(raw.strip("'\"` "))
            assert set(demand) == set(advertised), (role, demand, advertised)
            ((name, amount),) = demand.items()
            assert amount == 1
            assert advertised[name] >= amount
            names[role] = name
        assert names["prefill"] != names["decode"]
        # The head advertises neither, so no baton worker can land there.
        head_params = ray_cluster(objects)["spec"]["headGroupSpec"]["rayStartParams"]
        assert "resources" not in head_params
    assert names["decode"] == "decode_pool"


def test_too_few_gpus_for_the_workers_fails_the_render(chart):
    message = render_fails(chart, {"workerGroups": {"prefill": {"workers": 3, "replicas": 1, "gpus": 2}}})
    assert "workerGroups.prefill" in message
    assert "GPUs" in message


def test_missing_worker_group_fails_the_render(chart):
    message = render_fails(chart, {"workerGroups": {"decode": None}})
    assert "workerGroups.decode is required" in message


# --------------------------------------------------------------------------- serve command and probes


def test_serve_command_carries_model_and_settings(chart):
    values = {
        "serve": {
            "model": "/cache/models/My Model's 7B",
            "device": "cpu",
            "dtype": "bfloat16",
            "port": 6000,
            "maxBatchSize": 4,
            "extraArgs": ["--extra", "a b"],
        },
        "workerGroups": {
            "prefill": {"gpus": 0, "gpusPerWorker": 0, "workers": 2},
            "decode": {"gpus": 0, "gpusPerWorker": 0, "workers": 5},
        },
    }
    argv = serve_argv(render(chart, values))
    serve = flags(argv)
    assert serve["--model"] == "/cache/models/My Model's 7B"
    assert serve["--device"] == "cpu"
    assert serve["--dtype"] == "bfloat16"
    assert serve["--host"] == "0.0.0.0"
    assert serve["--port"] == "6000"
    assert serve["--ray-address"] == "auto"
    assert serve["--max-batch-size"] == "4"
    assert serve["--prefill-workers"] == "2"
    assert serve["--decode-workers"] == "5"
    assert serve["--prefill-num-gpus"] == "0"
    assert argv[-2:] == ["--extra", "a b"]


def test_default_serve_command_uses_the_builtin_model(chart):
    serve = flags(serve_argv(render(chart)))
    assert serve["--model"] == "smollm2-135m"
    assert serve["--dtype"] == "auto"
    assert serve["--port"] == "50051"


def test_probes_point_at_the_grpc_port(chart):
    objects = render(chart, {"serve": {"port": 6000}, "probes": {"service": ""}})
    head = head_container(objects)
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["grpc"] == 6000
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert head[probe]["grpc"] == {"port": 6000, "service": ""}, probe
        assert "exec" not in head[probe]
    assert head["startupProbe"]["failureThreshold"] * head["startupProbe"]["periodSeconds"] >= 600

    service = one(objects, "Service")
    port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert port["targetPort"] == "grpc"
    assert port["port"] == 50051
    assert service["spec"]["selector"] == {
        "ray.io/cluster": ray_cluster(objects)["metadata"]["name"],
        "ray.io/node-type": "head",
    }

    default_head = head_container(render(chart))
    assert default_head["readinessProbe"]["grpc"] == {"port": 50051, "service": "baton.v1.Generation"}


def _scrape_annotations(port: int) -> dict:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def test_http_port_is_served_exposed_and_scraped(chart):
    objects = render(chart)
    serve = flags(serve_argv(objects))
    assert serve["--http-port"] == "8000" and "--metrics-port" not in serve
    head = head_container(objects)
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["http"] == 8000
    service = one(objects, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8000 and ports["http"]["targetPort"] == "http"
    pod_annotations = ray_cluster(objects)["spec"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert _scrape_annotations(8000).items() <= pod_annotations.items()
    assert _scrape_annotations(8000).items() <= service["metadata"]["annotations"].items()
    # Workers serve no metrics: only the head pod is annotated.
    for group in ray_cluster(objects)["spec"]["workerGroupSpecs"]:
        assert "prometheus.io/scrape" not in (group["template"]["metadata"].get("annotations") or {})


def test_without_http_metrics_get_their_own_port(chart):
    objects = render(chart, {"serve": {"httpPort": 0}, "metrics": {"port": 9400}})
    serve = flags(serve_argv(objects))
    assert serve["--metrics-port"] == "9400" and "--http-port" not in serve
    assert {p["name"]: p["containerPort"] for p in head_container(objects)["ports"]}["metrics"] == 9400
    service = one(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "metrics"]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    quiet = render(chart, {"metrics": {"scrapeAnnotations": False}, "service": {"annotations": {"a": "b"}}})
    assert one(quiet, "Service")["metadata"]["annotations"] == {"a": "b"}
    pod = ray_cluster(quiet)["spec"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("prometheus.io/") for k in pod)


@pytest.mark.parametrize("http_port", [8000, 0])
def test_service_monitor_targets_the_metrics_port_of_the_service(chart, http_port):
    assert "ServiceMonitor" not in kinds(render(chart))  # optional: off by default
    values = {
        "serve": {"httpPort": http_port},
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "prom"}}},
    }
    objects = render(chart, values)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    assert endpoint["port"] == ("http" if http_port else "metrics")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "prom"
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["prot"] = "http"
    with pytest.raises(AssertionError):
        validate_object(bad, "test")


def test_head_lets_kuberay_build_ray_start_but_runs_its_own_command(chart):
    objects = render(chart)
    template = ray_cluster(objects)["spec"]["headGroupSpec"]["template"]
    assert template["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert "$KUBERAY_GEN_RAY_START_CMD" in head_script(objects)
    for name in ("prefill", "decode"):
        group_template = worker_group(objects, name)["template"]
        assert "ray.io/overwrite-container-cmd" not in group_template["metadata"].get("annotations", {})
        assert "command" not in group_template["spec"]["containers"][0]


# --------------------------------------------------------------------------- auth, TLS, config


def mounts(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def volumes(pod_spec: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec.get("volumes", [])}


def test_auth_token_secret_is_created_mounted_and_passed(chart):
    objects = render(chart, {"auth": {"token": "s3cret-token"}})
    secret = one(objects, "Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-baton-auth"
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cret-token"

    head = head_container(objects)
    mount = mounts(head)["auth"]
    volume = volumes(head_pod_spec(objects))["auth"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert flags(serve_argv(objects))["--auth-token-file"] == f"{mount['mountPath']}/token"

    generated = one(render(chart), "Secret")
    assert len(base64.b64decode(generated["data"]["token"])) >= 32


def test_disabling_auth_removes_the_secret(chart):
    objects = render(chart, {"auth": {"enabled": False}})
    assert "Secret" not in kinds(objects)
    assert "auth" not in mounts(head_container(objects))
    assert "auth" not in volumes(head_pod_spec(objects))
    assert "--auth-token-file" not in serve_argv(objects)


def test_existing_auth_secret_is_used_not_created(chart):
    objects = render(chart, {"auth": {"existingSecret": "my-token", "secretKey": "api"}})
    assert "Secret" not in kinds(objects)
    volume = volumes(head_pod_spec(objects))["auth"]
    assert volume["secret"] == {"secretName": "my-token", "items": [{"key": "api", "path": "api"}]}
    path = flags(serve_argv(objects))["--auth-token-file"]
    assert path == mounts(head_container(objects))["auth"]["mountPath"] + "/api"


def test_tls_mounts_the_secret_and_passes_cert_and_key(chart):
    objects = render(chart, {"tls": {"enabled": True, "existingSecret": "baton-tls"}})
    head = head_container(objects)
    volume = volumes(head_pod_spec(objects))["tls"]
    assert volume["secret"]["secretName"] == "baton-tls"
    mount = mounts(head)["tls"]
    assert mount["readOnly"] is True
    serve = flags(serve_argv(objects))
    assert serve["--tls-cert"] == f"{mount['mountPath']}/tls.crt"
    assert serve["--tls-key"] == f"{mount['mountPath']}/tls.key"

    # Native gRPC probes cannot speak TLS: the probes run the checker shipped in a ConfigMap.
    probe_map = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-probe")
    )
    script = (CHART / "files" / "grpc_health_probe.py").read_text()
    assert probe_map["data"]["grpc_health_probe.py"].strip() == script.strip()
    assert volumes(head_pod_spec(objects))["probe"]["configMap"]["name"] == probe_map["metadata"]["name"]
    probe_dir = mounts(head)["probe"]["mountPath"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in head[probe]
        command = head[probe]["exec"]["command"]
        assert command[:2] == ["python", f"{probe_dir}/grpc_health_probe.py"]
        options = flags(command[2:])
        assert options["--port"] == "50051"
        assert options["--ca"] == f"{mount['mountPath']}/tls.crt"
        assert options["--service"] == "baton.v1.Generation"

    plain = render(chart)
    assert "--tls-cert" not in serve_argv(plain)
    assert "tls" not in mounts(head_container(plain))


def test_tls_without_a_secret_fails_the_render(chart):
    message = render_fails(chart, {"tls": {"enabled": True}})
    assert "tls.existingSecret" in message


def test_settings_configmap_reaches_every_ray_pod(chart):
    objects = render(chart, {"settings": {"MY_SETTING": 7}, "cache": {"mountPath": "/models"}})
    config = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-settings")
    )
    assert config["data"]["MY_SETTING"] == "7"
    assert config["data"]["BATON_CACHE"] == "/models/baton"
    assert config["data"]["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] == "1"
    cluster = ray_cluster(objects)
    templates = [t for _, t in pod_templates(cluster)]
    assert len(templates) == 3
    for template in templates:
        container = template["spec"]["containers"][0]
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        assert mounts(container)["cache"]["mountPath"] == "/models"
        assert template["spec"]["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
        assert template["spec"]["automountServiceAccountToken"] is False


def test_pod_disruption_budget_covers_the_cluster_pods(chart):
    assert "PodDisruptionBudget" not in kinds(render(chart))
    objects = render(chart, {"podDisruptionBudget": {"enabled": True}})
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "ray.io/cluster": ray_cluster(objects)["metadata"]["name"]
    }
    pdb = one(
        render(chart, {"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}}),
        "PodDisruptionBudget",
    )
    assert pdb["spec"] == {"minAvailable": "50%", "selector": pdb["spec"]["selector"]}


# --------------------------------------------------------------------------- the head script, run for real


FAKE_RAY = """#!/bin/bash
# Stand-in for the `ray` CLI: health-check succeeds, start records its argv and blocks.
if [ "$1" = "health-check" ]; then exit 0; fi
printf '%s\\0' "$@" > "$FAKE_DIR/ray.argv"
echo $$ > "$FAKE_DIR/ray.pid"
exec sleep 60
"""

FAKE_BATON = """#!/bin/bash
# Stand-in for `baton`: records its argv, then exits with $FAKE_BATON_EXIT or blocks.
printf '%s\\0' "$@" > "$FAKE_DIR/baton.argv"
echo $$ > "$FAKE_DIR/baton.pid"
if [ -n "${FAKE_BATON_EXIT:-}" ]; then exit "$FAKE_BATON_EXIT"; fi
exec sleep 60
"""

GENERATED_RAY_START = (
    "ray start --head  --block  --dashboard-host=0.0.0.0  --num-gpus=0  --resources='{\"x\": 1}' "
)


def run_head_script(tmp_path: Path, script: str, baton_exit: int | None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("ray", FAKE_RAY), ("baton", FAKE_BATON)):
        path = bin_dir / name
        path.write_text(body)
        path.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "KUBERAY_GEN_RAY_START_CMD": GENERATED_RAY_START,
        "RAY_ADDRESS": "127.0.0.1:6379",
    }
    if baton_exit is not None:
        env["FAKE_BATON_EXIT"] = str(baton_exit)
    return subprocess.Popen(
        ["/bin/bash", "-c", "--", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_argv(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\0")[:-1]


def process_gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_head_script_is_valid_bash(chart):
    for values in ({}, ci_values(), {"auth": {"enabled": False}, "serve": {"extraArgs": ["--x", "it's"]}}):
        script = head_script(render(chart, values))
        checked = subprocess.run(["/bin/bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_head_script_starts_ray_then_serve_and_exits_with_serve(chart, tmp_path):
    objects = render(chart, {"serve": {"model": "org/model v2"}})
    proc = run_head_script(tmp_path, head_script(objects), baton_exit=3)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 3, output
    # `ray start` got KubeRay's generated line with its quoted JSON intact.
    ray_argv = read_argv(tmp_path / "ray.argv")
    assert ray_argv[:3] == ["start", "--head", "--block"]
    assert '--resources={"x": 1}' in ray_argv
    # `baton serve` got exactly the arguments the chart's tests parse out of the script.
    baton_argv = read_argv(tmp_path / "baton.argv")
    assert baton_argv == ["serve", *serve_argv(objects)]
    assert flags(baton_argv[1:])["--model"] == "org/model v2"
    # The Ray node is stopped once the server is gone, so the container exits and restarts.
    assert wait_for(lambda: process_gone(int((tmp_path / "ray.pid").read_text())))


def test_head_script_stops_both_processes_on_sigterm(chart, tmp_path):
    proc = run_head_script(tmp_path, head_script(render(chart)), baton_exit=None)
    try:
        assert wait_for(lambda: (tmp_path / "baton.pid").exists()), "baton was not started"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    for name in ("ray.pid", "baton.pid"):
        pid = int((tmp_path / name).read_text())
        assert wait_for(lambda pid=pid: process_gone(pid)), f"{name} still running"


# --------------------------------------------------------------------------- the TLS probe checker


def load_probe_module():
    """The chart's probe checker as a module (compiled in memory: no __pycache__ in the chart)."""
    path = CHART / "files" / "grpc_health_probe.py"
    module = types.ModuleType("grpc_health_probe")
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    return module


def start_health_server(statuses: dict[str, int], credentials=None):
    """A gRPC server answering grpc.health.v1.Health/Check from `statuses` (raw protobuf bytes)."""
    grpc = pytest.importorskip("grpc")

    def check(request: bytes, context):
        service = request[2:].decode() if request else ""
        if service not in statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return bytes([0x08, statuses[service]])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, port


def test_probe_checker_reports_serving_only():
    probe = load_probe_module()
    assert probe.encode_request("") == b""
    assert probe.encode_request("x" * 200) == b"\x0a\xc8\x01" + b"x" * 200
    assert probe.decode_status(b"") == 0
    assert probe.decode_status(b"\x08\x01") == 1
    assert probe.decode_status(b"\x12\x01z\x08\x02") == 2  # unknown fields are skipped
    server, port = start_health_server({"": 1, "baton.v1.Generation": 2})
    try:
        assert probe.main(["--port", str(port), "--timeout", "5"]) == 0
        assert probe.main(["--port", str(port), "--service", "baton.v1.Generation"]) == 1
        assert probe.main(["--port", str(port), "--service", "nope"]) == 1
    finally:
        server.stop(None)


def test_probe_checker_speaks_tls(tmp_path):
    grpc = pytest.importorskip("grpc")
    cert_pem, key_pem = self_signed_cert(["baton.example.com"])
    ca_file = tmp_path / "tls.crt"
    ca_file.write_bytes(cert_pem)

    probe = load_probe_module()
    server, port = start_health_server(
        {"baton.v1.Generation": 1}, grpc.ssl_server_credentials([(key_pem, cert_pem)])
    )
    try:
        args = [
            "--port",
            str(port),
            "--service",
            "baton.v1.Generation",
            "--ca",
            str(ca_file),
            "--timeout",
            "5",
        ]
        assert probe.main([*args, "--server-name", "baton.example.com"]) == 0
        # The name is checked, and a plaintext check of a TLS server fails.
        assert probe.main([*args, "--server-name", "other.example.com"]) == 1
        assert probe.main(["--port", str(port), "--service", "baton.v1.Generation", "--timeout", "2"]) == 1
    finally:
        server.stop(None)


def test_readme_documents_every_top_level_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, f"values not described in k8s/baton/README.md: {missing}"
    assert "Deploy on Kubernetes" in readme
    assert 'baton generate --server localhost:50051 "Hello"' in readme
