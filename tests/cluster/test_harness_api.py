"""The API server is the real one: CRD schemas, the status subresource, optimistic concurrency."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from kubeharness.binaries import HELM_VERSION, KUBERNETES_VERSION
from kubeharness.testing import wait_until

pytestmark = pytest.mark.cluster

CRD = Path(__file__).parent / "fixtures" / "widgets-crd.yaml"
GROUP, VERSION, PLURAL = "kubeharness.test", "v1", "widgets"


@pytest.fixture
def widgets(k8s_api, kubectl):
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/widgets.kubeharness.test")
    api = client.CustomObjectsApi(k8s_api)
    # discovery lags Established by a moment
    wait_until(lambda: _listable(api), 30, "the widgets resource to be served")
    yield api
    # Wait until it is gone: the next test's apply on a still-terminating CRD would be a no-op,
    # and its `kubectl wait` would then find nothing.
    kubectl("delete", "-f", str(CRD), "--wait=true", "--timeout=60s")


def _listable(api) -> bool:
    try:
        api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return True
    except client.ApiException:
        return False


def _widget(name: str, **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name},
            "spec": spec}


def test_crd_schema_is_enforced_by_the_api_server(widgets, namespace):
    created = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("ok", size=3, color="red"))
    assert created["spec"] == {"size": 3, "color": "red"}

    with pytest.raises(client.ApiException) as err:
        widgets.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _widget("bad", size=0, color="green"))
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" \
        in message
    assert 'spec.color: Unsupported value: "green": supported values: "red", "blue"' in message


def test_status_subresource_and_resource_version_conflicts(widgets, namespace):
    obj = widgets.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, _widget("w", size=1))
    # spec writes ignore status; the status subresource ignores spec
    obj["status"] = {"phase": "Ignored"}
    obj = widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w", obj)
    assert "status" not in obj
    obj["status"] = {"phase": "Ready"}
    obj["spec"]["size"] = 9
    obj = widgets.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w", obj)
    assert obj["status"] == {"phase": "Ready"} and obj["spec"]["size"] == 1

    stale = dict(obj, metadata=dict(obj["metadata"]))
    obj["spec"]["size"] = 2
    widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w", obj)
    stale["spec"] = {"size": 5}
    with pytest.raises(client.ApiException) as err:
        widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w", stale)
    assert err.value.status == 409


def test_kube_env_gives_subprocesses_the_pinned_kubectl_and_helm(kube_env, node_agent):
    nodes = subprocess.run(["kubectl", "get", "nodes", "-o", "name"], env=kube_env,
                           capture_output=True, text=True, check=True)
    assert nodes.stdout.strip() == f"node/{node_agent.name}"
    version = subprocess.run(["kubectl", "version", "-o", "json"], env=kube_env,
                             capture_output=True, text=True, check=True)
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    helm = subprocess.run(["helm", "version", "--short"], env=kube_env, capture_output=True,
                          text=True, check=True)
    assert helm.stdout.startswith(HELM_VERSION)
