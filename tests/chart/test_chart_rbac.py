"""The chart's RBAC grants exactly what the operator uses (operator_permissions.py), per mode."""

from __future__ import annotations

import pytest
from chartkit import NAMESPACE, RELEASE, of_kind, one, render
from operator_permissions import (
    CLUSTER,
    CLUSTER_WHEN_NAMESPACED,
    IN_RUN_NAMESPACES,
    LEADER_ELECTION,
    PEERING_CLUSTER,
    PEERING_NAMESPACED,
    Permission,
)

FULLNAME = f"{RELEASE}-cream-operator"
Triple = tuple[str, str, str]


def triples(perms: list[Permission]) -> set[Triple]:
    return {(p.group, p.resource, p.verb) for p in perms}


def granted(role: dict) -> set[Triple]:
    out: set[Triple] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((group, resource, verb))
    return out


def assert_same(actual: set[Triple], expected: set[Triple], where: str) -> None:
    missing, extra = expected - actual, actual - expected
    assert not missing and not extra, (
        f"{where}: missing {sorted(missing)} (the operator would be forbidden), "
        f"extra {sorted(extra)} (not least privilege)")


def assert_binds(binding: dict, role: dict) -> None:
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role["kind"],
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME,
                                    "namespace": NAMESPACE}]
    assert binding["metadata"].get("namespace") == role["metadata"].get("namespace")


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_cluster_wide_is_one_cluster_role_with_everything(tmp_path, peering):
    values = {"peering": {"name": "cream", "priority": 10}} if peering else {}
    docs = render(tmp_path, values)
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    expected = triples(CLUSTER + IN_RUN_NAMESPACES + (PEERING_CLUSTER if peering else []))
    assert_same(granted(role), expected, "ClusterRole")
    assert_binds(one(docs, "ClusterRoleBinding"), role)
    sa = one(docs, "ServiceAccount")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (FULLNAME, NAMESPACE)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_namespaced_is_a_role_per_namespace_and_only_kopfs_reads_cluster_wide(tmp_path, peering):
    watched = ["team-a", "team-b"]
    values = {"watchNamespaces": watched}
    if peering:
        values["peering"] = {"name": "cream", "priority": 10}
    docs = render(tmp_path, values)
    cluster_role = one(docs, "ClusterRole")
    assert_same(granted(cluster_role), triples(CLUSTER + CLUSTER_WHEN_NAMESPACED), "ClusterRole")
    assert_binds(one(docs, "ClusterRoleBinding"), cluster_role)
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == watched
    expected = triples(IN_RUN_NAMESPACES + (PEERING_NAMESPACED if peering else []))
    for ns in watched:
        assert_same(granted(roles[ns]), expected, f"Role in {ns}")
        assert_binds(bindings[ns], roles[ns])


def test_no_rbac_objects_when_rbac_is_disabled(tmp_path):
    docs = render(tmp_path, {"rbac": {"create": False}, "watchNamespaces": ["a"]})
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_an_existing_service_account_is_used_and_not_created(tmp_path):
    docs = render(tmp_path, {"serviceAccount": {"create": False, "name": "ops-sa"}})
    assert not of_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"


@pytest.mark.parametrize("watched", [[], ["team-a", NAMESPACE]], ids=["cluster-wide", "namespaced"])
def test_leader_election_adds_only_the_lease_in_the_releases_namespace(tmp_path, watched):
    plain = render(tmp_path, {"watchNamespaces": watched})
    docs = render(tmp_path, {"watchNamespaces": watched, "replicaCount": 2,
                             "leaderElection": {"enabled": True}})
    name = f"{FULLNAME}-leader-election"
    role = next(r for r in of_kind(docs, "Role") if r["metadata"]["name"] == name)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert_same(granted(role), triples(LEADER_ELECTION), "leader election Role")
    binding = next(b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == name)
    assert_binds(binding, role)
    # Everything else as without it.
    others = [d for d in docs if d["metadata"]["name"] != name]
    assert [d for d in plain if d["kind"] in ("Role", "ClusterRole")] == \
        [d for d in others if d["kind"] in ("Role", "ClusterRole")]
