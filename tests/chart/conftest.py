"""The chart tests that need the real API server use the cluster harness's fixtures, defined once in
tests/cluster/conftest.py and re-exported here for tests/chart (pytest gives a conftest's fixtures
only to its own directory). Session-scoped ones are per defining module: a run of tests/chart and
tests/cluster in one pytest session starts two clusters (about 9 s each) -- moving the fixtures into
a plugin module that tests/conftest.py names in pytest_plugins would share one.
"""

from cluster.conftest import (  # noqa: F401 - fixtures, used by name
    cluster,
    k8s_api,
    kube_env,
    kubeconfig,
    kubectl,
    namespace,
    namespace_factory,
    node_agent,
    prometheus_factory,
    s3,
    wait_until,
)
