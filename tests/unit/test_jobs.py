"""The Job manifests the operator creates for each step."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from cream_operator import jobs, pipeline, specfile
from cream_operator.config import OperatorConfig
from cream_stages import artifacts, contract

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
BIG = yaml.safe_load((ROOT / "examples/llama3-8b.yaml").read_text())
RUN = {"metadata": {"name": "tiny", "namespace": "ml", "uid": "0b1e-uid"}}
CONFIG = OperatorConfig(stage_image="registry.example/stages:1", storage_uri="s3://b/runs")


def _steps(doc):
    spec = specfile.parse(doc).spec
    return spec, {s.key: s for s in pipeline.plan(spec, "s3://b/runs/ml/tiny/0b1e-uid")}


def test_names_are_deterministic_unique_and_short():
    spec, steps = _steps(TINY)
    names = [jobs.job_name("tiny", "0b1e-uid", s) for s in steps.values()]
    assert len(set(names)) == len(names)
    assert names == [jobs.job_name("tiny", "0b1e-uid", s) for s in steps.values()]
    long = "a" * 63
    for step in steps.values():
        name = jobs.job_name(long, "0b1e-uid", step)
        assert len(name) <= 60 and name[0].isalnum() and name[-1].isalnum(), name
    # A new object of the same name gets new Job names.
    assert jobs.job_name("tiny", "other-uid", steps["iter-0/sft"]) != names[0]


def test_job_runs_the_stage_entrypoint_with_its_request_inline():
    spec, steps = _steps(TINY)
    job = jobs.job_manifest(RUN, spec, steps["iter-1/score-m0"], CONFIG)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "cream_stages"]
    assert container["args"][:2] == ["score", "--request"]
    request = contract.parse_request(artifacts.read_json(container["args"][2]))
    assert request == steps["iter-1/score-m0"].request
    assert container["image"] == "registry.example/stages:1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "0b1e-uid"
    assert job["metadata"]["labels"][jobs.LABEL_STAGE] == "score"
    assert job["metadata"]["labels"][jobs.LABEL_ITERATION] == "1"
    assert job["metadata"]["annotations"][jobs.ANNOTATION_STEP] == "iter-1/score-m0"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_credentials_only_through_a_secret_reference():
    spec, steps = _steps(BIG)
    job = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], CONFIG)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "cream-s3", "optional": True}}]
    text = json.dumps(job)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text


def test_scheduling_and_resources_from_the_spec():
    spec, steps = _steps(BIG)
    job = jobs.job_manifest(RUN, spec, steps["iter-1/sample"], CONFIG)
    pod = job["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "8"
    assert res["requests"]["memory"] == "256Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                   "effect": "NoSchedule"}]
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    consistency = jobs.job_manifest(RUN, spec, steps["iter-1/consistency"], CONFIG)
    resources = consistency["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in json.dumps(resources)


def test_multi_gpu_training_runs_under_torchrun():
    spec, steps = _steps(BIG)
    job = jobs.job_manifest(RUN, spec, steps["iter-1/dpo"], CONFIG)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["torchrun", "--nproc_per_node=8", "--nnodes=1"]
    assert container["args"][:3] == ["-m", "cream_stages", "dpo"]
    assert "completionMode" not in job["spec"]
    assert jobs.headless_service(RUN, steps["iter-1/dpo"], job) is None


def test_inference_on_several_gpus_runs_one_engine_per_gpu_without_torchrun():
    spec, steps = _steps(BIG)  # sample, score and evaluate on 8 GPUs each
    for key in ("iter-1/sample", "iter-1/score-m0", "iter-1/evaluate"):
        job = jobs.job_manifest(RUN, spec, steps[key], CONFIG)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "cream_stages"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        request = contract.parse_request(artifacts.read_json(container["args"][2]))
        assert request.data_parallel == 8
        assert request == steps[key].request.model_copy(update={"data_parallel": 8})
    tiny, tiny_steps = _steps(TINY)  # one GPU: one engine
    one = jobs.job_manifest(RUN, tiny, tiny_steps["iter-1/sample"], CONFIG)
    request = contract.parse_request(artifacts.read_json(
        one["spec"]["template"]["spec"]["containers"][0]["args"][2]))
    assert request.data_parallel == 1


def test_multi_node_training_is_an_indexed_job_with_a_headless_service():
    doc = copy.deepcopy(BIG)
    doc["spec"]["resources"]["sft"]["nodes"] = 4
    spec, steps = _steps(doc)
    job = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], CONFIG)
    name = job["metadata"]["name"]
    assert (job["spec"]["completionMode"], job["spec"]["completions"],
            job["spec"]["parallelism"]) == ("Indexed", 4, 4)
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == name
    command = pod["containers"][0]["command"]
    assert "--nnodes=4" in command and "--node_rank=$(JOB_COMPLETION_INDEX)" in command
    assert f"--master_addr={name}-0.{name}" in command
    assert "--master_port=29500" in command
    svc = jobs.headless_service(RUN, steps["iter-0/sft"], job)
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == name
    assert svc["spec"]["selector"] == {"job-name": name}
    assert svc["spec"]["ports"] == [{"name": "rendezvous", "port": 29500}]
    # One failed attempt fails up to 4 Pods: the limit counts retries of the stage.
    assert job["spec"]["backoffLimit"] == 2 * 4
    # Sampling never spans nodes.
    sample = jobs.job_manifest(RUN, spec, steps["iter-1/sample"], CONFIG)
    assert "completionMode" not in sample["spec"]


def test_the_rendezvous_port_is_the_operators_setting():
    doc = copy.deepcopy(BIG)
    doc["spec"]["resources"]["dpo"]["nodes"] = 2
    spec, steps = _steps(doc)
    config = OperatorConfig.from_env({"CREAM_TORCHRUN_PORT": "31234"})
    job = jobs.job_manifest(RUN, spec, steps["iter-1/dpo"], config)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--master_port=31234" in container["command"]
    assert container["ports"] == [{"containerPort": 31234, "name": "rendezvous"}]
    svc = jobs.headless_service(RUN, steps["iter-1/dpo"], job)
    assert svc["spec"]["ports"] == [{"name": "rendezvous", "port": 31234}]


def test_kueue_admits_jobs_through_suspend_and_the_queue_label():
    doc = copy.deepcopy(TINY)
    doc["spec"]["scheduling"] = {"queueName": "gpu-queue", "priorityClassName": "high",
                                 "serviceAccountName": "trainer"}
    spec, steps = _steps(doc)
    job = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], CONFIG)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][jobs.KUEUE_QUEUE] == "gpu-queue"
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "high" and pod["serviceAccountName"] == "trainer"


def test_image_per_stage_overrides_the_default():
    doc = copy.deepcopy(TINY)
    doc["spec"]["resources"]["consistency"]["image"] = "registry.example/slim:1"
    spec, steps = _steps(doc)
    image = jobs.job_manifest(RUN, spec, steps["iter-1/consistency"], CONFIG)[
        "spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example/slim:1"


def test_bad_input_fails_the_job_at_once_and_crashes_are_retried():
    spec, steps = _steps(TINY)
    job = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], CONFIG)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In",
                                                   "values": [2]}} in rules
    assert job["spec"]["backoffLimit"] == 2  # the spec's default, for everything else


def test_cleanup_job_deletes_the_run_root_and_outlives_the_run():
    spec, _ = _steps(TINY)
    job = jobs.cleanup_job_manifest(RUN, spec, "s3://b/runs/ml/tiny/0b1e-uid", CONFIG)
    assert "ownerReferences" not in job["metadata"]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "cream_stages.cleanup",
                                    "s3://b/runs/ml/tiny/0b1e-uid"]
    assert container["envFrom"] == [{"secretRef": {"name": "cream-s3", "optional": True}}]


def _request(job):
    return contract.parse_request(artifacts.read_json(
        job["spec"]["template"]["spec"]["containers"][0]["args"][2]))


def test_inference_on_several_nodes_is_an_indexed_job_without_a_service():
    doc = copy.deepcopy(BIG)
    for stage in ("sample", "score", "evaluate", "consistency"):
        doc["spec"]["resources"][stage]["nodes"] = 3
    spec, steps = _steps(doc)
    for key in ("iter-1/sample", "iter-1/score-m0", "iter-1/evaluate"):
        job = jobs.job_manifest(RUN, spec, steps[key], CONFIG)
        assert (job["spec"]["completionMode"], job["spec"]["completions"],
                job["spec"]["parallelism"]) == ("Indexed", 3, 3)
        pod = job["spec"]["template"]["spec"]
        assert "subdomain" not in pod and "ports" not in pod["containers"][0]
        assert pod["containers"][0]["command"] == ["python", "-m", "cream_stages"]
        # every Pod runs the same request; its index is the Job controller's JOB_COMPLETION_INDEX
        request = _request(job)
        assert (request.nodes, request.data_parallel, request.tensor_parallel) == (3, 8, 1)
        assert request == steps[key].request.model_copy(update={"nodes": 3, "data_parallel": 8})
        assert jobs.headless_service(RUN, steps[key], job) is None
        assert job["spec"]["backoffLimit"] == 2 * 3
    # consistency has nothing to share out: one Pod
    job = jobs.job_manifest(RUN, spec, steps["iter-1/consistency"], CONFIG)
    assert "completionMode" not in job["spec"]


def test_tensor_parallel_makes_engines_of_gpu_groups():
    doc = copy.deepcopy(BIG)  # 8 GPUs per inference Pod, vllm
    doc["spec"]["resources"]["sample"]["tensorParallel"] = 2
    doc["spec"]["resources"]["score"]["tensorParallel"] = 8
    spec, steps = _steps(doc)
    sample = _request(jobs.job_manifest(RUN, spec, steps["iter-1/sample"], CONFIG))
    assert (sample.data_parallel, sample.tensor_parallel, sample.nodes) == (4, 2, 1)
    score = _request(jobs.job_manifest(RUN, spec, steps["iter-1/score-m1"], CONFIG))
    assert (score.data_parallel, score.tensor_parallel) == (1, 8)
    evaluate = _request(jobs.job_manifest(RUN, spec, steps["iter-1/evaluate"], CONFIG))
    assert (evaluate.data_parallel, evaluate.tensor_parallel) == (8, 1)
    job = jobs.job_manifest(RUN, spec, steps["iter-1/sample"], CONFIG)
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"  # the Pod still asks for all of them


# The Pod Security Standard `restricted` (kubernetes.io/docs/concepts/security/
# pod-security-standards), as the API server's PodSecurity admission checks a Pod template.
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}


def _restricted_violations(pod: dict) -> list[str]:
    found = []
    pod_sc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {vol['name']}: {sorted(kinds)}")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        found.append("seccompProfile")
    if pod_sc.get("runAsUser") == 0:
        found.append("runAsUser 0")
    for c in pod["containers"] + (pod.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {
                "NET_BIND_SERVICE"}:
            found.append(f"{c['name']}: capabilities")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            found.append(f"{c['name']}: runAsUser 0")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            found.append(f"{c['name']}: hostPort")
    return found


def test_every_pod_the_operator_makes_meets_the_restricted_pod_security_standard():
    doc = copy.deepcopy(BIG)
    doc["spec"]["resources"]["sft"]["nodes"] = 2  # torchrun across an Indexed Job
    doc["spec"]["resources"]["sample"]["nodes"] = 2
    spec, steps = _steps(doc)
    tiny, tiny_steps = _steps(TINY)
    manifests = [jobs.job_manifest(RUN, spec, s, CONFIG) for s in steps.values()]
    manifests += [jobs.job_manifest(RUN, tiny, s, CONFIG) for s in tiny_steps.values()]
    manifests.append(jobs.cleanup_job_manifest(RUN, spec, "s3://b/runs/ml/tiny/0b1e-uid",
                                               CONFIG))
    for job in manifests:
        pod = job["spec"]["template"]["spec"]
        assert _restricted_violations(pod) == [], job["metadata"]["name"]
        # The stages image's user (images/stages/Dockerfile: USER 10001:10001).
        assert (pod["securityContext"]["runAsUser"],
                pod["securityContext"]["runAsGroup"]) == (10001, 10001)
    # /dev/shm for NCCL and dataloaders stays: a memory-backed emptyDir is an allowed volume.
    sft = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], CONFIG)["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in sft["volumes"]


def test_the_stage_user_is_the_operators_setting():
    spec, steps = _steps(TINY)
    other = OperatorConfig.from_env({"CREAM_STAGE_RUN_AS_USER": "2000",
                                     "CREAM_STAGE_RUN_AS_GROUP": "0"})
    pod = jobs.job_manifest(RUN, spec, steps["iter-0/sft"], other)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 2000
    assert pod["securityContext"]["runAsGroup"] == 0
    # Empty: the image's own USER, which runAsNonRoot still has the kubelet verify.
    image = OperatorConfig.from_env({"CREAM_STAGE_RUN_AS_USER": "",
                                     "CREAM_STAGE_RUN_AS_GROUP": ""})
    cleanup = jobs.cleanup_job_manifest(RUN, spec, "s3://b/r", image)["spec"]["template"]["spec"]
    assert cleanup["securityContext"] == {"runAsNonRoot": True,
                                          "seccompProfile": {"type": "RuntimeDefault"}}
    assert _restricted_violations(cleanup) == []


def test_a_root_or_unparsable_stage_user_is_refused_naming_the_variable():
    for value in ("0", "cream", "-1"):
        with pytest.raises(ValueError, match=r"CREAM_STAGE_RUN_AS_USER=.*10001"):
            OperatorConfig.from_env({"CREAM_STAGE_RUN_AS_USER": value})


def test_judge_and_spin_steps_get_named_jobs_with_their_stage_resources():
    doc = copy.deepcopy(TINY)
    del doc["spec"]["iterations"]
    doc["spec"]["data"]["prompts"] = doc["spec"]["data"]["prompts"][:1]
    doc["spec"]["schedule"] = [{"kind": "sft"}, {"kind": "spin"}, {
        "kind": "selfReward", "reward": "judge", "judge": {"consistency": True}}]
    doc["spec"]["resources"]["judge"] = {"gpus": 0, "cpu": "3"}
    spec, steps = _steps(doc)
    names = {k: jobs.job_name("tiny", "0b1e-uid", s) for k, s in steps.items()}
    assert names["iter-2/judge-m2"].endswith("-2-judge-m2")
    assert names["iter-2/judge-m1"].endswith("-2-judge-m1")
    assert names["iter-1/spin"].endswith("-1-spin")
    job = jobs.job_manifest(RUN, spec, steps["iter-2/judge-m2"], CONFIG)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["judge", "--request"]
    assert container["resources"]["requests"]["cpu"] == "3"
