"""Fixtures of the test cluster (tests/kubeharness/fixtures.py), defined here once for every test
directory so that tests/cluster and tests/chart share one session-scoped cluster."""

from kubeharness.fixtures import (  # noqa: F401 - fixtures, used by name
    built_images,
    cluster,
    k8s_api,
    kube_env,
    kubeconfig,
    kubectl,
    kueue,
    kwok_factory,
    namespace,
    namespace_factory,
    node_agent,
    prometheus_factory,
    s3,
    second_node,
    wait_until,
)
