"""No confused deputy, on the real API server: a user who may create CreamRuns but not Pods cannot
make the operator run another image, as another ServiceAccount, or with another Secret. The
chart's ValidatingAdmissionPolicy refuses such a run before it exists, naming the field and the
fix; a run within the chart's lists is accepted. (The operator refuses the same runs itself:
tests/unit/test_policy.py.)"""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from chartkit import CHART, ROOT, helm

pytestmark = pytest.mark.cluster

RELEASE = "deputy"  # not the other chart tests' release: the policy is cluster-scoped
USER = "alice"
TINY = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())


def creamrun(name: str, **sections) -> str:
    doc = copy.deepcopy(TINY)
    doc["metadata"] = {"name": name}
    for key, value in sections.items():
        doc["spec"].setdefault(key, {}).update(value)
    # JSON, not YAML: kubectl reads YAML 1.1, where the key `n` (spec.sampling.n) is false.
    return json.dumps(doc)


@pytest.fixture(scope="module")
def crd(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/creamruns.cream.dev")


@pytest.fixture
def author(kubectl, namespace_factory, crd):
    """A namespace the operator watches, and a user there who may create CreamRuns, not Pods."""
    ns = namespace_factory("team")
    kubectl("create", "role", "creamrun-author", "-n", ns, "--resource=creamruns.cream.dev",
            "--verb=get,list,watch,create,update,patch,delete")
    kubectl("create", "rolebinding", "creamrun-author", "-n", ns, "--role=creamrun-author",
            f"--user={USER}")
    return ns


@pytest.fixture
def chart_policy(tmp_path, kubectl, author):
    """The chart's admission policy and binding only (no operator), for the author's namespace."""
    values = {"watchNamespaces": [author],
              "policy": {"allowedImages": ["registry.example/team/*"],
                         "allowedServiceAccounts": ["trainer"]}}
    out = helm("template", RELEASE, str(CHART), "--namespace", "cream-system", values=values,
               tmp=tmp_path).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"].startswith(
        "ValidatingAdmissionPolicy")]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy",
                                         "ValidatingAdmissionPolicyBinding"]
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    kubectl("apply", "-f", "-", input=manifest)
    yield
    kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest, check=False)


def test_a_creamrun_author_cannot_make_the_operator_a_confused_deputy(
        kubectl, author, chart_policy, wait_until):
    def as_author(*args, input=None):
        return kubectl(f"--as={USER}", "-n", author, *args, input=input, check=False)

    # The user may not create Pods (nor Jobs) themselves...
    for resource in ("pods", "jobs.batch"):
        assert as_author("auth", "can-i", "create", resource).stdout.strip() == "no"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "miner"},
           "spec": {"containers": [{"name": "m", "image": "evil.example/miner:1"}]}}
    proc = as_author("create", "-f", "-", input=json.dumps(pod))
    assert proc.returncode != 0 and "forbidden" in proc.stderr, proc.stderr

    # ...nor have the operator create one with another image, account or Secret.
    def refused(name: str, **sections) -> str:
        proc = as_author("create", "-f", "-", input=creamrun(name, **sections))
        if proc.returncode == 0:  # the API server had not loaded the new policy yet
            kubectl("delete", "creamrun", name, "-n", author)
            return ""
        return proc.stderr

    stderr = wait_until(lambda: refused("image", scheduling={"image": "evil.example/miner:1"}),
                        60, "the admission policy to refuse a CreamRun")
    assert "ValidatingAdmissionPolicy" in stderr and "denied request" in stderr, stderr
    assert ("spec.scheduling.image: evil.example/miner:1 is not allowed (policy.allowedImages: "
            "registry.example/team/*); leave it empty for the operator's stage image") in stderr
    cases = [
        ("stage-image", {"resources": {"dpo": {"image": "registry.example/teams/x:1"}}},
         "spec.resources.dpo.image: registry.example/teams/x:1 is not allowed"),
        ("account", {"scheduling": {"serviceAccountName": "cluster-admin"}},
         "spec.scheduling.serviceAccountName: cluster-admin is not allowed "
         "(policy.allowedServiceAccounts: trainer)"),
        ("secret", {"storage": {"secretName": "prod-db"}},
         "spec.storage.secretName: prod-db is not allowed (policy.allowedSecrets: none besides "
         "the default); leave it empty for the operator's S3 Secret (cream-s3)"),
    ]
    for name, sections, message in cases:
        stderr = refused(name, **sections)
        assert message in stderr, f"{name}: {stderr or 'accepted'}"
    got = as_author("get", "creamruns", "-o", "name").stdout.split()
    assert got == [], f"refused runs exist: {got}"

    # Within the chart's lists (or the defaults, named or not): accepted.
    allowed = creamrun("allowed", scheduling={"image": "registry.example/team/stages:2",
                                              "serviceAccountName": "trainer"},
                       resources={"sample": {"image": "ghcr.io/cream-operator/stages:0.1.0"}},
                       storage={"secretName": "cream-s3"})
    proc = as_author("create", "-f", "-", input=allowed)
    assert proc.returncode == 0, proc.stderr
    # An update is checked as well.
    proc = as_author("patch", "creamrun", "allowed", "--type=merge", "-p",
                     json.dumps({"spec": {"scheduling": {"image": "evil.example/miner:1"}}}))
    assert proc.returncode != 0 and "spec.scheduling.image: evil.example/miner:1" in proc.stderr, \
        proc.stderr
    proc = as_author("label", "creamrun", "allowed", "team=a")  # the rest of it is not
    assert proc.returncode == 0, proc.stderr


def test_the_policy_binds_only_the_namespaces_the_operator_watches(
        kubectl, namespace_factory, chart_policy, author, wait_until):
    """A namespace no operator of this release watches is another release's concern."""
    other = namespace_factory("other")
    # The policy is live (it refuses in the watched namespace)...
    def live():
        proc = kubectl("create", "-n", author, "--dry-run=server", "-f", "-", check=False,
                       input=creamrun("probe", scheduling={"image": "evil.example/miner:1"}))
        return proc.returncode != 0 and "denied request" in proc.stderr
    wait_until(live, 60, "the admission policy to refuse a CreamRun")
    # ...and passes the same run elsewhere.
    kubectl("create", "-n", other, "--dry-run=server", "-f", "-",
            input=creamrun("probe", scheduling={"image": "evil.example/miner:1"}))
