"""The rendered chart against the real kube-apiserver (tests/kubeharness): a server-side dry run
validates every object with the API server's own schemas, admission and field validation (unknown
fields are errors), in both RBAC modes and with every optional part switched on; the release's
namespace enforces the "restricted" Pod Security Standard."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from chartkit import CHART, RELEASE, helm, template

pytestmark = pytest.mark.cluster

# The Prometheus Operator release whose ServiceMonitor CRD checks the chart's ServiceMonitor. Its
# CRDs ship in the Go module (example/prometheus-operator-crd/), fetched through the module proxy.
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"


def prometheus_operator_crd(name: str) -> Path:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    go = "go" if subprocess.run(["which", "go"], capture_output=True).returncode == 0 \
        else "/usr/local/go/bin/go"
    try:
        proc = subprocess.run([go, "mod", "download", "-json", PROMETHEUS_OPERATOR], env=env,
                              capture_output=True, text=True, timeout=300, cwd="/")
    except FileNotFoundError:
        pytest.fail("the Go toolchain (go) fetches the ServiceMonitor CRD; it builds the cluster "
                    "binaries too (make cluster-tools)")
    assert proc.returncode == 0, f"go mod download {PROMETHEUS_OPERATOR}:\n{proc.stderr}"
    path = Path(json.loads(proc.stdout)["Dir"]) / "example" / "prometheus-operator-crd" / name
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def servicemonitor_crd(kubectl) -> str:
    crd = prometheus_operator_crd("monitoring.coreos.com_servicemonitors.yaml")
    kubectl("apply", "--server-side", "-f", str(crd))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com")
    return "servicemonitors.monitoring.coreos.com"


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_the_api_servers_dry_run(tmp_path, kubectl, namespace_factory,
                                                         servicemonitor_crd, mode):
    release_ns = namespace_factory("cream-system")
    monitoring_ns = namespace_factory("monitoring")
    watched = [namespace_factory("team"), namespace_factory("team")] \
        if mode == "namespaced" else []
    values = {
        "watchNamespaces": watched,
        "peering": {"name": "cream", "priority": 10},
        "serviceMonitor": {"enabled": True, "namespace": monitoring_ns,
                           "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {"namespace": monitoring_ns, "annotations": {"grafana_folder": "CREAM"}},
        "s3": {"createSecret": True, "accessKey": "a", "secretKey": "b",
               "endpoint": "http://minio:9000", "region": "us-east-1",
               "storageUri": "s3://cream/runs"},
        "stages": {"extraEnv": {"HF_HUB_OFFLINE": "1"}},
        "extraEnv": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}}]}},
    }
    kubectl("label", "namespace", release_ns, "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/warn=restricted")
    rendered = template(tmp_path, values, namespace=release_ns).stdout
    kinds = [line.split(":", 1)[1].strip() for line in rendered.splitlines()
             if line.startswith("kind:")]
    # No --namespace: every namespaced object names its own (some are in other namespaces).
    proc = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered,
                   check=False)
    assert proc.returncode == 0, proc.stderr
    assert "would violate PodSecurity" not in proc.stderr, proc.stderr
    accepted = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(kinds), proc.stdout
    expected = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                "ServiceMonitor", "Secret", "ConfigMap", "Pod", "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding"}
    if mode == "namespaced":
        expected |= {"Role", "RoleBinding"}
        assert kinds.count("Role") == kinds.count("RoleBinding") == len(watched)
    assert set(kinds) == expected


CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_each_ci_values_file_passes_the_api_servers_dry_run(kubectl, namespace_factory,
                                                            servicemonitor_crd, values_file):
    """chart-testing's install cases (ci/*-values.yaml), each as the API server sees it."""
    release_ns = namespace_factory("cream-system")
    kubectl("label", "namespace", release_ns, "pod-security.kubernetes.io/enforce=restricted")
    values = yaml.safe_load(values_file.read_text()) or {}
    named = [*values.get("watchNamespaces", []), (values.get("dashboard") or {}).get("namespace")]
    for ns in filter(None, named):  # the namespaces the files name, shared by them
        kubectl("create", "namespace", ns, check=False)
    rendered = helm("template", RELEASE, str(CHART), "--namespace", release_ns, "--values",
                    str(values_file)).stdout
    proc = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered,
                   check=False)
    assert proc.returncode == 0, proc.stderr
    assert "would violate PodSecurity" not in proc.stderr, proc.stderr
    kinds = [line for line in rendered.splitlines() if line.startswith("kind:")]
    accepted = [line for line in proc.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(kinds), proc.stdout


def test_the_charts_crd_is_accepted_by_the_api_server(kubectl):
    """The CRD helm installs from crds/ (the generated crds/cream.dev_creamruns.yaml)."""
    crd = CHART / "crds" / "cream.dev_creamruns.yaml"
    proc = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(crd), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("(server dry run)"), proc.stdout
