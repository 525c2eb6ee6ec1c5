"""Every (apiGroup, resource, verb) the operator uses in the Kubernetes API, with the code that
needs it. test_chart_rbac.py checks that the chart's roles grant exactly these: no less (the
operator would fail), no more (least privilege). Change this list with the code it names.
"""

from __future__ import annotations

from typing import NamedTuple


class Permission(NamedTuple):
    group: str
    resource: str
    verb: str
    needed_by: str


def _each(group: str, resource: str, verbs: dict[str, str]) -> list[Permission]:
    return [Permission(group, resource, verb, why) for verb, why in verbs.items()]


# In every namespace whose CreamRuns the operator handles.
IN_RUN_NAMESPACES: list[Permission] = [
    *_each("cream.dev", "creamruns", {
        "get": "controller.Controller._get_run: get_namespaced_custom_object (after a 409, and "
               "for the cleanup of a deleted run)",
        "list": "kopf's watch behind handlers.run_event (a list, then a watch)",
        "watch": "kopf's watch behind handlers.run_event",
        "patch": "kopf: the finalizer of handlers.delete_artifacts (cleanupPolicy Delete; with "
                 "peering, every run's, for its timer handlers.resync), and its progress "
                 "annotations (handlers.configure: AnnotationsProgressStorage)",
    }),
    *_each("cream.dev", "creamruns/status", {
        "patch": "controller.Controller._patch_status: patch_namespaced_custom_object_status",
    }),
    *_each("batch", "jobs", {
        "get": "controller.Controller.cleanup: read_namespaced_job (the cleanup Job of a deleted "
               "run with cleanupPolicy Delete, handlers.delete_artifacts)",
        "list": "controller.Controller._jobs_of: list_namespaced_job (a running or pending step's "
                "Job the watch cache lacks); kopf's watch behind handlers.job_event",
        "watch": "kopf's watch behind handlers.job_event",
        "create": "controller.Controller._create and .cleanup: create_namespaced_job",
        "delete": "controller.Controller._delete: delete_namespaced_job (a retried stage)",
    }),
    *_each("", "pods", {
        "list": "controller.Controller._observe_jobs: list_namespaced_pod (a finished Job whose "
                "Pod's end the watch has not delivered); kopf's watch behind handlers.pod_event",
        "watch": "kopf's watch behind handlers.pod_event (termination messages)",
    }),
    *_each("", "services", {
        "create": "controller.Controller._create: create_namespaced_service (jobs.headless_service "
                  "of multi-node training)",
    }),
    *_each("", "events", {
        "create": "controller.Controller._event: create_namespaced_event; kopf posts its own "
                  "(settings.posting, kopf.warn in handlers.delete_artifacts) as core v1 Events",
        "list": "kopf's watch behind handlers.failed_create_event (the Job controller's "
                "FailedCreate Events only: handlers.FAILED_CREATE as a field selector)",
        "watch": "kopf's watch behind handlers.failed_create_event",
    }),
]

# Cluster-wide, whatever the mode.
CLUSTER: list[Permission] = _each("apiextensions.k8s.io", "customresourcedefinitions", {
    "list": "kopf: kopf/_core/reactor/observation.py resource_observer (initial scan)",
    "watch": "kopf: resource_observer, to notice CRDs added, changed or removed",
})

# Cluster-wide, when the operator is given namespaces (`cream operator --namespace ...`): kopf
# lists and watches namespaces to match its patterns (observation.namespace_observer); when it
# runs cluster-wide it does not look at namespaces at all.
CLUSTER_WHEN_NAMESPACED: list[Permission] = _each("", "namespaces", {
    "list": "kopf: observation.namespace_observer (not cluster-wide)",
    "watch": "kopf: observation.namespace_observer (not cluster-wide)",
})

# With `cream operator --peering NAME` (kopf/_core/engines/peering.py; kopf's RBAC docs).
_PEERING_VERBS = {
    "get": "kopf peering (kopf's documented RBAC)",
    "list": "kopf peering: the watch of the peering object",
    "watch": "kopf peering: the watch of the peering object",
    "patch": "kopf peering: its own heartbeat in the peering object (peering.touch)",
}
PEERING_NAMESPACED: list[Permission] = _each("kopf.dev", "kopfpeerings", _PEERING_VERBS)
PEERING_CLUSTER: list[Permission] = _each("kopf.dev", "clusterkopfpeerings", _PEERING_VERBS)

# With leaderElection.enabled, in the release's namespace (cream_operator/leader.py: LeaseLock).
LEADER_ELECTION: list[Permission] = _each("coordination.k8s.io", "leases", {
    "get": "leader.LeaseLock.read: read_namespaced_lease (every retry period)",
    "create": "leader.LeaseLock.write: create_namespaced_lease (the first replica ever)",
    "update": "leader.LeaseLock.write: replace_namespaced_lease (take over, renew, release)",
})
