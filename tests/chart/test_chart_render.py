"""The chart: lint, schema, the CRD's single source, and what it renders in each mode."""

from __future__ import annotations

import os
import tarfile
import tomllib

import pytest
import yaml
from chartkit import (
    CHART,
    DASHBOARD,
    NAMESPACE,
    RELEASE,
    ROOT,
    env_of,
    helm,
    of_kind,
    one,
    operator_container,
    render,
    template,
)

from cream_operator import policy
from cream_operator.cli import build_parser
from cream_operator.config import WORKERS, OperatorConfig
from cream_operator.leader import ElectionConfig
from cream_operator.spec import CreamRunSpec

FULLNAME = f"{RELEASE}-cream-operator"
CRD = ROOT / "crds" / "cream.dev_creamruns.yaml"
CHART_CRD = CHART / "crds" / "cream.dev_creamruns.yaml"

# Values that switch on every optional part: one of the chart's CI values files.
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EVERYTHING = yaml.safe_load((CHART / "ci" / "everything-values.yaml").read_text())


def parse_operator_args(container: dict):
    """The Deployment's command line, parsed by the operator's own CLI parser."""
    assert container["command"] == ["python", "-m", "cream_operator"]
    return build_parser().parse_args(["operator", *container["args"]])


# --- lint and schema ----------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["defaults", "everything"])
def test_helm_lint_strict_is_clean(tmp_path, values):
    proc = helm("lint", "--strict", str(CHART), values=values, tmp=tmp_path)
    assert "0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_every_ci_values_file_lints_and_renders_a_working_operator(values_file):
    """chart-testing's install cases (ci/*-values.yaml): lint-clean, and the Deployment they
    render runs a command line the operator parses."""
    proc = helm("lint", "--strict", str(CHART), "--values", str(values_file))
    assert "0 chart(s) failed" in proc.stdout, proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values",
               str(values_file)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    args = parse_operator_args(operator_container(docs))
    values = yaml.safe_load(values_file.read_text()) or {}
    assert args.namespace == (values.get("watchNamespaces") or [])


def test_the_ci_values_files_cover_the_charts_modes():
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "namespaced-values.yaml", "everything-values.yaml",
            "digest-values.yaml", "standby-values.yaml"} <= names


def test_helmignore_keeps_ci_values_out_of_the_package(tmp_path):
    helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("cream-operator-*.tgz")
    with tarfile.open(tgz) as tar:
        names = tar.getnames()
    assert "cream-operator/values.yaml" in names and "cream-operator/README.md" in names
    assert not [n for n in names if n.startswith("cream-operator/ci/")], names


@pytest.mark.parametrize("values", [
    {"replicaCount": "two"},
    {"replicaCount": 2},  # two replicas without leader election would both act: see values.yaml
    {"replicaCount": 2, "leaderElection": {"enabled": False}},
    {"leaderElection": {"enabled": True, "retryPeriodSeconds": 0}},
    {"leaderElection": {"enabled": "yes"}},
    {"leaderElection": {"enabled": True, "leaseSeconds": 15}},
    {"replicas": 1},  # a misspelt value is refused, not ignored
    {"image": {"pullPolicy": "Sometimes"}},
    {"image": {"digest": "latest"}},
    {"watchNamespaces": "team-a"},
    {"watchNamespaces": ["Team_A"]},
    {"ports": {"metrics": 80}},  # a non-root container cannot bind it
    {"workers": 0},  # the operator would refuse to start
    {"logFormat": "yaml"},
    {"stages": {"defaultGpus": -1}},
    {"stages": {"runAsUser": 0}},  # root: runAsNonRoot refuses every stage Pod
    {"stages": {"runAsUser": "cream"}},  # runAsNonRoot can verify only a number
    {"stages": {"extraEnv": {"bad-name": "x"}}},
    {"stages": {"extraEnv": {"N": 1}}},
    {"s3": {"createSecret": True}},  # without keys
    {"serviceMonitor": {"interval": "soon"}},
    {"livenessProbe": {"httpGet": {"path": "/"}}},
    {"policy": {"allowedImages": "registry.example/x:1"}},  # a list
    {"policy": {"allowedImages": ["a.example/x:1,b.example/y:2"]}},  # one entry, one image
    {"policy": {"allowedServiceAccounts": ["Trainer"]}},
    {"policy": {"allowedSecrets": ["team s3"]}},
    {"policy": {"allowedSecrets": ["team-s3"], "allowed": ["x"]}},
], ids=lambda v: yaml.safe_dump(v, default_flow_style=True).strip())
def test_values_schema_rejects_bad_values(tmp_path, values):
    proc = template(tmp_path, values, check=False)
    assert proc.returncode != 0, f"accepted: {values}"
    assert "don't meet the specifications of the schema" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("values", "says"), [
    ({"renewDeadlineSeconds": 15}, "retryPeriodSeconds < renewDeadlineSeconds < "
                                   "leaseDurationSeconds"),
    ({"retryPeriodSeconds": 10}, "retryPeriodSeconds < renewDeadlineSeconds"),
])
def test_leader_election_timings_must_let_a_leader_give_up_first(tmp_path, values, says):
    proc = template(tmp_path, {"leaderElection": {"enabled": True, **values}}, check=False)
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_leader_election_and_peering_are_exclusive(tmp_path):
    proc = template(tmp_path, {"leaderElection": {"enabled": True},
                               "peering": {"name": "cream"}}, check=False)
    assert proc.returncode != 0 and "choose one" in proc.stderr, proc.stderr


def test_two_replicas_elect_a_leader_on_a_lease_named_after_the_release(tmp_path):
    """The env the chart sets, read by the operator's own ElectionConfig.from_env, with the
    downward API's values as the kubelet would fill them in."""
    docs = render(tmp_path, {"replicaCount": 2, "leaderElection": {
        "enabled": True, "leaseDurationSeconds": 20, "renewDeadlineSeconds": 12,
        "retryPeriodSeconds": 3}})
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    container = operator_container(docs)
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
              for e in container["env"] if "valueFrom" in e}
    assert fields == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    env = {**env_of(container), "POD_NAME": "op-7d9-x2", "POD_NAMESPACE": NAMESPACE}
    election = ElectionConfig.from_env(env)
    assert election == ElectionConfig(FULLNAME, NAMESPACE, "op-7d9-x2", 20, 12, 3)
    assert OperatorConfig.from_env(env) == OperatorConfig()  # nothing else changes
    assert ElectionConfig.from_env(env_of(operator_container(render(tmp_path)))) is None


def test_health_and_metrics_ports_must_differ(tmp_path):
    proc = template(tmp_path, {"ports": {"health": 9090, "metrics": 9090}}, check=False)
    assert proc.returncode != 0 and "ports.health and ports.metrics" in proc.stderr


# --- one source for the CRD and the version ------------------------------------------------------

def test_chart_crd_is_the_generated_crd(tmp_path):
    """A symlink to crds/ (no copy to drift), which helm show, install and package follow."""
    assert CHART_CRD.is_symlink()
    assert CHART_CRD.resolve() == CRD.resolve()
    assert not os.path.isabs(os.readlink(CHART_CRD)), "a relative link survives a clone"
    assert [p.name for p in (CHART / "crds").iterdir()] == [CRD.name]
    shown = helm("show", "crds", str(CHART)).stdout
    assert shown.removeprefix("---\n").strip() == CRD.read_text().strip()
    helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("cream-operator-*.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember("cream-operator/crds/cream.dev_creamruns.yaml")
        assert member.isfile()
        assert tar.extractfile(member).read() == CRD.read_bytes()


def test_app_version_is_the_project_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]


def test_default_images_are_the_operators_defaults(tmp_path):
    container = operator_container(render(tmp_path))
    assert container["image"] == "ghcr.io/cream-operator/operator:0.1.0"
    # The chart's default stage image is the operator's own default (config.py).
    assert env_of(container)["CREAM_STAGE_IMAGE"] == OperatorConfig().stage_image


def test_a_digest_wins_over_the_tag(tmp_path):
    digest = "sha256:" + "ab" * 32
    docs = render(tmp_path, {"image": {"digest": digest},
                             "stages": {"image": {"tag": "x", "digest": digest}}})
    container = operator_container(docs)
    assert container["image"] == f"ghcr.io/cream-operator/operator@{digest}"
    assert env_of(container)["CREAM_STAGE_IMAGE"] == f"ghcr.io/cream-operator/stages@{digest}"


# --- the operator Deployment ---------------------------------------------------------------------

def test_cluster_wide_operator_command_line_and_pod(tmp_path):
    docs = render(tmp_path)
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    container = operator_container(docs)
    args = parse_operator_args(container)
    assert args.namespace == []  # cluster-wide
    assert args.peering is None and not args.verbose
    assert (args.log_format, args.workers) == ("text", WORKERS)  # the operator's own defaults
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.metrics_port == ports["metrics"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod  # none by default


def test_operator_runs_restricted(tmp_path):
    """Pod Security Standards 'restricted', read-only root, a writable /tmp."""
    docs = render(tmp_path)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # images/*/Dockerfile: USER 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = pod["volumes"]
    assert volume["name"] == mount["name"] and "emptyDir" in volume


def test_values_reach_the_operator_as_its_configuration(tmp_path):
    """The env the chart sets, read by OperatorConfig.from_env, is what the values say."""
    docs = render(tmp_path, EVERYTHING)
    container = operator_container(docs)
    config = OperatorConfig.from_env(env_of(container))
    assert config.stage_image == "registry.example/cream/stages:2024.1"
    assert config.image_pull_policy == "Always"
    assert config.default_gpus == 8
    assert config.python == "python3"
    assert (config.run_as_user, config.run_as_group) == (2000, 2000)
    assert config.storage_uri == "s3://cream/runs"
    assert config.s3_secret == "team-s3"
    assert config.extra_env == {"HF_HUB_OFFLINE": "1", "NCCL_DEBUG": "WARN"}
    assert config.allowed_images == ("registry.example/cream/stages:2024.2",
                                     "registry.example/team/*")
    assert config.allowed_service_accounts == ("trainer",)
    assert config.allowed_secrets == ("team-s3-readonly",)
    assert {"name": "FROM_FIELD", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} \
        in container["env"]
    args = parse_operator_args(container)
    assert args.namespace == EVERYTHING["watchNamespaces"]
    assert (args.peering, args.priority, args.verbose) == ("cream", 100, True)
    assert (args.log_format, args.workers) == ("json", 48)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == EVERYTHING["nodeSelector"]
    assert pod["tolerations"] == EVERYTHING["tolerations"]


def test_defaults_give_the_operators_own_defaults(tmp_path):
    config = OperatorConfig.from_env(env_of(operator_container(render(tmp_path))))
    assert config == OperatorConfig()


# --- Service, ServiceMonitor, Secret, dashboard, helm test ---------------------------------------

def test_service_exposes_the_named_container_ports(tmp_path):
    docs = render(tmp_path)
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in operator_container(docs)["ports"]}
    assert set(ports) == set(container_ports) == {"health", "metrics"}
    for name, port in ports.items():
        assert port["targetPort"] == name and port["port"] == container_ports[name]
    assert not of_kind(docs, "ServiceMonitor"), "the ServiceMonitor is off by default"


def test_service_monitor_scrapes_the_metrics_port_and_keeps_the_runs_namespace(tmp_path):
    docs = render(tmp_path, EVERYTHING)
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # cream_* series carry the run's namespace in `namespace`; without honorLabels Prometheus
    # would rename it exported_namespace and the dashboard's namespace filter would break.
    assert endpoint["honorLabels"] is True


def test_s3_secret_has_the_variables_boto3_reads(tmp_path):
    docs = render(tmp_path, EVERYTHING)
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "team-s3"
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_ENDPOINT_URL": "http://minio.storage:9000", "AWS_REGION": "us-east-1"}
    assert env_of(operator_container(docs))["CREAM_S3_SECRET"] == "team-s3"
    assert not of_kind(render(tmp_path), "Secret"), "no Secret unless asked for"


def test_dashboard_config_map_carries_the_chart_dashboard_for_grafanas_sidecar(tmp_path):
    cm = one(render(tmp_path), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"cream.json": DASHBOARD.read_text()}
    cm = one(render(tmp_path, {"dashboard": {"label": "grafana.example/dashboard",
                                             "labelValue": "yes", "namespace": "monitoring",
                                             "annotations": {"grafana_folder": "CREAM"}}}),
             "ConfigMap")
    assert cm["metadata"]["labels"]["grafana.example/dashboard"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "CREAM"}
    assert not of_kind(render(tmp_path, {"dashboard": {"enabled": False}}), "ConfigMap")


def test_helm_test_pod_checks_health_and_metrics_through_the_service(tmp_path):
    docs = render(tmp_path)
    (pod,) = [d for d in of_kind(docs, "Pod")
              if d["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == operator_container(docs)["image"]
    assert container["command"] == ["python", "-c"]
    (script,) = container["args"]
    compile(script, "helm-test", "exec")  # valid Python
    host = f"{FULLNAME}.{NAMESPACE}.svc"
    assert f"http://{host}:8080/healthz" in script
    assert f"http://{host}:9090/metrics" in script
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    other = render(tmp_path, {"tests": {"host": "127.0.0.1"}, "ports": {"metrics": 19090}})
    (pod,) = [d for d in of_kind(other, "Pod")]
    assert "http://127.0.0.1:19090/metrics" in pod["spec"]["containers"][0]["args"][0]


def test_notes_say_how_to_apply_the_example_and_watch_runs(tmp_path):
    proc = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                values={"watchNamespaces": ["team-a"]}, tmp=tmp_path)
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -n team-a -f examples/tiny.yaml" in notes
    assert "kubectl get creamruns" in notes
    assert f"helm test {RELEASE}" in notes


# --- what a CreamRun may name (no confused deputy) -----------------------------------------------

def _policy_fields(vap: dict) -> list[str]:
    return [v["messageExpression"].split(":", 1)[0].strip('"')
            for v in vap["spec"]["validations"]]


def test_the_admission_policy_checks_every_field_the_operator_checks(tmp_path):
    vap = one(render(tmp_path), "ValidatingAdmissionPolicy")
    assert vap["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert vap["spec"]["failurePolicy"] == "Fail"
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["creamruns"] and rule["operations"] == ["CREATE", "UPDATE"]
    everything = CreamRunSpec.model_validate({
        **yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())["spec"],
        "scheduling": {"image": "x:1", "serviceAccountName": "sa"},
        "storage": {"secretName": "s"},
        "resources": {st: {"image": "x:1"} for st in
                      ("sft", "sample", "score", "consistency", "dpo", "evaluate")}})
    checked = [m.split(":")[0] for m in policy.refusals(everything, OperatorConfig())]
    assert _policy_fields(vap) == checked


def test_the_admission_policy_lists_come_from_the_values_and_the_defaults(tmp_path):
    vap = one(render(tmp_path, EVERYTHING), "ValidatingAdmissionPolicy")
    variables = {v["name"]: v["expression"] for v in vap["spec"]["variables"]}
    # CEL list literals (JSON's are CEL's): the defaults first, "*" entries as prefixes.
    assert yaml.safe_load(variables["imageNames"]) == [
        "registry.example/cream/stages:2024.1", "registry.example/cream/stages:2024.2"]
    assert yaml.safe_load(variables["imagePrefixes"]) == ["registry.example/team/"]
    assert yaml.safe_load(variables["serviceAccountNames"]) == ["default", "trainer"]
    assert yaml.safe_load(variables["secretNames"]) == ["team-s3", "team-s3-readonly"]


def test_the_binding_covers_the_watched_namespaces_and_can_be_left_out(tmp_path):
    docs = render(tmp_path, {"watchNamespaces": ["team-a", "team-b"]})
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == one(docs, "ValidatingAdmissionPolicy")[
        "metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    # Cluster-wide: every namespace.
    assert "matchResources" not in one(render(tmp_path), "ValidatingAdmissionPolicyBinding")["spec"]
    off = render(tmp_path, {"policy": {"admissionPolicy": False}})
    assert not of_kind(off, "ValidatingAdmissionPolicy")
    assert not of_kind(off, "ValidatingAdmissionPolicyBinding")
