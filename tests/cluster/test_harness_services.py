"""The real services beside the cluster: MinIO for S3, Prometheus for metrics."""

from __future__ import annotations

import base64

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubeharness.process import free_port
from kubeharness.testing import PY, job_manifest, job_pods, terminated, wait_job_finished

pytestmark = pytest.mark.cluster


def test_s3_round_trips_an_object_through_boto3(s3):
    bucket = s3.make_bucket()
    s3c = s3.client()
    s3c.put_object(Bucket=bucket, Key="runs/r1/manifest.json", Body=b'{"ok": true}')

    assert s3c.get_object(Bucket=bucket, Key="runs/r1/manifest.json")["Body"].read() \
        == b'{"ok": true}'
    listed = s3c.list_objects_v2(Bucket=bucket, Prefix="runs/")
    assert [o["Key"] for o in listed["Contents"]] == ["runs/r1/manifest.json"]
    with pytest.raises(s3c.exceptions.NoSuchKey):
        s3c.get_object(Bucket=bucket, Key="runs/missing")


def test_a_job_writes_to_s3_with_credentials_from_a_secret(s3, k8s_api, namespace):
    bucket = s3.make_bucket()
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "s3"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in s3.env().items()}})
    code = (f"import boto3; boto3.client('s3').put_object(Bucket='{bucket}', Key='out.txt', "
            "Body=b'from a pod')")
    manifest = job_manifest("upload", [PY, "-c", code])
    manifest["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "s3"}}]
    client.BatchV1Api(k8s_api).create_namespaced_job(namespace, manifest)

    job = wait_job_finished(k8s_api, namespace, "upload")
    [pod] = job_pods(k8s_api, namespace, "upload")
    assert job["status"].get("succeeded") == 1, terminated(pod)
    assert s3.client().get_object(Bucket=bucket, Key="out.txt")["Body"].read() == b"from a pod"


def test_prometheus_scrapes_a_target_and_answers_promql(prometheus_factory):
    registry = CollectorRegistry()
    gauge = Gauge("kubeharness_test_consistency", "a value to scrape", ["run"],
                  registry=registry)
    gauge.labels(run="r1").set(0.75)
    gauge.labels(run="r2").set(0.25)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory(targets=[f"127.0.0.1:{port}"])
        value = prom.wait_for_value('kubeharness_test_consistency{run="r1"}')
        assert value == 0.75
        assert prom.wait_for_value("sum(kubeharness_test_consistency)") == 1.0
        assert prom.wait_for_value('up{job="test"}') == 1.0
    finally:
        server.shutdown()
        thread.join(5)
