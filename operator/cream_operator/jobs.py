"""Kubernetes manifests of a step's Job (and, for multi-node training, its headless Service).

Pure functions of the run, the step and the operator's configuration. One Job per stage (and per
model for `score`) keeps GPU quota free between stages and lets Kueue admit each stage on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re

from cream_stages.artifacts import data_uri
from cream_stages.contract import STAGE_TABLE

from .config import OperatorConfig
from .pipeline import Step
from .spec import GROUP, KIND, VERSION, CreamRunSpec, StageResources

MANAGED_BY = "cream-operator"
LABEL_RUN = f"{GROUP}/run"
LABEL_RUN_UID = f"{GROUP}/run-uid"
LABEL_ITERATION = f"{GROUP}/iteration"
LABEL_STAGE = f"{GROUP}/stage"
ANNOTATION_STEP = f"{GROUP}/step"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
TERMINATION_LOG = "/dev/termination-log"
NAME_MAX = 63  # a Job's name becomes its Pods' job-name label value


def job_name(run: str, uid: str, step: Step) -> str:
    """Deterministic per (run, iteration, stage, model); unique per run object; <= 63 chars."""
    suffix = f"{step.iteration}-{step.stage}"
    if STAGE_TABLE[step.stage].per_model:
        suffix += f"-m{step.model_index}"
    tag = hashlib.sha256(f"{uid}/{step.key}".encode()).hexdigest()[:5]
    # Indexed Jobs' Pod hostnames append "-<index>": leave room for it.
    room = NAME_MAX - len(suffix) - len(tag) - 2 - 3
    base = re.sub(r"-+$", "", run[:room])
    return f"{base}-{tag}-{suffix}"


def owner_reference(run: dict) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": run["metadata"]["name"],
        "uid": run["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(run: dict, step: Step) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "cream-stage",
        LABEL_RUN: run["metadata"]["name"],
        LABEL_RUN_UID: run["metadata"]["uid"],
        LABEL_ITERATION: str(step.iteration),
        LABEL_STAGE: step.stage,
    }


def stage_resources(spec: CreamRunSpec, stage: str) -> StageResources:
    return getattr(spec.resources, stage)


def gpus_for(spec: CreamRunSpec, stage: str, config: OperatorConfig) -> int:
    res = stage_resources(spec, stage)
    if res.gpus is not None:
        return res.gpus
    return config.default_gpus if STAGE_TABLE[stage].wants_gpu else 0


def _shards_over_nodes(step: Step) -> bool:
    """Whether the stage's request can split its work over several Pods (sample, score,
    evaluate: node_shards.py)."""
    return "nodes" in type(step.request).model_fields


def nodes_for(spec: CreamRunSpec, step: Step) -> int:
    """Pods of a stage's Job, an Indexed Job when several: training stages (torchrun across
    them) and inference stages (each Pod a share of the batches); consistency runs on one."""
    if not STAGE_TABLE[step.stage].trains and not _shards_over_nodes(step):
        return 1
    return stage_resources(spec, step.stage).nodes or 1


def _uses_torchrun(step: Step, gpus: int, nodes: int) -> bool:
    if not STAGE_TABLE[step.stage].trains:
        return False
    return step.request.train.backend == "deepspeed" and (gpus > 1 or nodes > 1)


def request_for(step: Step, gpus: int, nodes: int = 1, tensor_parallel: int = 1):
    """The step's request as its Pods run it: an inference stage given several GPUs runs one
    engine on each group of `tensor_parallel` of them (data parallel: gpus / tensor_parallel
    engines), on each of `nodes` Pods; its outputs do not depend on any of these."""
    if not _shards_over_nodes(step):
        return step.request
    update: dict = {}
    if gpus // tensor_parallel > 1:
        update["data_parallel"] = gpus // tensor_parallel
    if tensor_parallel > 1:
        update["tensor_parallel"] = tensor_parallel
    if nodes > 1:
        update["nodes"] = nodes
    return step.request.model_copy(update=update) if update else step.request


def container_command(step: Step, name: str, config: OperatorConfig, gpus: int,
                      nodes: int, tensor_parallel: int = 1) -> tuple[list[str], list[str]]:
    body = request_for(step, gpus, nodes, tensor_parallel).model_dump(mode="json")
    request = data_uri(json.dumps(body, sort_keys=True).encode())
    stage_args = [step.stage, "--request", request]
    if not _uses_torchrun(step, gpus, nodes):
        return [config.python, "-m", "cream_stages"], stage_args
    torchrun = ["torchrun", f"--nproc_per_node={max(gpus, 1)}", f"--nnodes={nodes}"]
    if nodes > 1:
        # Index 0's stable hostname through the headless Service is the rendezvous point.
        torchrun += [
            "--node_rank=$(JOB_COMPLETION_INDEX)",
            f"--master_addr={name}-0.{name}",
            f"--master_port={config.torchrun_port}",
        ]
    return torchrun, ["-m", "cream_stages", *stage_args]


def resource_requirements(spec: CreamRunSpec, stage: str, gpus: int) -> dict:
    res = stage_resources(spec, stage)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if gpus:
        # Extended resources must have requests equal to limits.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _base_env(config: OperatorConfig) -> list[dict]:
    """Environment of every Pod the operator makes, after its own variables."""
    return [
        # The image's root filesystem is read-only: caches go to the writable /tmp.
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "HF_HOME", "value": "/tmp/cache/huggingface"},
        *({"name": k, "value": v} for k, v in sorted(config.extra_env.items())),
    ]


def pod_security_context(config: OperatorConfig) -> dict:
    """Every stage and cleanup Pod meets the Pod Security Standard `restricted` (namespaces of
    shared GPU clusters often enforce it, and refuse any other Pod): a non-root user (numeric, so
    the kubelet can verify it), the runtime's default seccomp profile."""
    ids = {"runAsUser": config.run_as_user, "runAsGroup": config.run_as_group}
    return {"runAsNonRoot": True, **{k: v for k, v in ids.items() if v is not None},
            "seccompProfile": {"type": "RuntimeDefault"}}


# `restricted`'s container half: no privilege escalation, every capability dropped. Its volume
# rule holds too: stage Pods mount only emptyDirs (/tmp, /dev/shm) and the S3 Secret as env.
CONTAINER_SECURITY_CONTEXT = {"allowPrivilegeEscalation": False,
                              "capabilities": {"drop": ["ALL"]}}


def job_manifest(run: dict, spec: CreamRunSpec, step: Step, config: OperatorConfig) -> dict:
    name = job_name(run["metadata"]["name"], run["metadata"]["uid"], step)
    gpus = gpus_for(spec, step.stage, config)
    nodes = nodes_for(spec, step)
    res = stage_resources(spec, step.stage)
    command, args = container_command(step, name, config, gpus, nodes, res.tensor_parallel)
    sched = spec.scheduling
    secret = spec.storage.secret_name or config.s3_secret
    env = [
        {"name": "CREAM_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "CREAM_STEP", "value": step.key},
        {"name": "CREAM_RUN", "value": f"{run['metadata']['namespace']}/{run['metadata']['name']}"},
        *_base_env(config),
    ]
    container = {
        "name": "stage",
        "image": res.image or sched.image or config.stage_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": command,
        "args": args,
        "env": env,
        "envFrom": [{"secretRef": {"name": secret, "optional": True}}],
        "resources": resource_requirements(spec, step.stage, gpus),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }
    pod_spec: dict = {
        "restartPolicy": "Never",
        "securityContext": pod_security_context(config),
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            # NCCL and dataloader workers need more shared memory than a container's default.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True)
                                   for t in sched.tolerations]
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if sched.service_account_name:
        pod_spec["serviceAccountName"] = sched.service_account_name
    job_labels = labels(run, step)
    if sched.queue_name:
        job_labels[KUEUE_QUEUE] = sched.queue_name
    job_spec: dict = {
        # Retries of the stage: one failed attempt of an N-Pod (multi-node) Job fails up to N Pods,
        # since the other ranks fail when one dies, and each counts against the limit.
        "backoffLimit": sched.backoff_limit * nodes,
        # Bad input (exit code 2) fails the same way every time: fail the Job at once. Anything
        # else (a crash, an OOM kill, a lost node) is retried up to backoffLimit.
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
        "template": {
            "metadata": {"labels": labels(run, step), "annotations": {ANNOTATION_STEP: step.key}},
            "spec": pod_spec,
        },
    }
    if sched.queue_name:
        job_spec["suspend"] = True  # Kueue admits it by clearing suspend
    if sched.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = sched.active_deadline_seconds
    if sched.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = sched.ttl_seconds_after_finished
    if nodes > 1:
        # Each Pod's index is JOB_COMPLETION_INDEX, set by the Job controller.
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        if STAGE_TABLE[step.stage].trains:  # torchrun's rendezvous at index 0's hostname
            pod_spec["subdomain"] = name
            container["ports"] = [{"containerPort": config.torchrun_port, "name": "rendezvous"}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": run["metadata"]["namespace"],
            "labels": job_labels,
            "annotations": {ANNOTATION_STEP: step.key},
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }


def headless_service(run: dict, step: Step, job: dict) -> dict | None:
    """The rendezvous Service of a multi-node training Job (None for other Jobs: inference
    nodes meet only through their shards in storage)."""
    if "subdomain" not in job["spec"]["template"]["spec"]:
        return None
    name = job["metadata"]["name"]
    [port] = job["spec"]["template"]["spec"]["containers"][0]["ports"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": run["metadata"]["namespace"],
            "labels": labels(run, step),
            "ownerReferences": [owner_reference(run)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"job-name": name},
            "ports": [{"name": "rendezvous", "port": port["containerPort"]}],
            "publishNotReadyAddresses": True,
        },
    }


def cleanup_job_manifest(run: dict, spec: CreamRunSpec, root: str, config: OperatorConfig) -> dict:
    """The Job that deletes a run's artifacts when the run is deleted (cleanupPolicy: Delete).

    No ownerReference: the run is on its way out, and the Job must outlive it; a TTL removes it.
    """
    meta = run["metadata"]
    name = f"{re.sub(r'-+$', '', meta['name'][:40])}-{meta['uid'][:5]}-cleanup"
    secret = spec.storage.secret_name or config.s3_secret
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY,
                       "app.kubernetes.io/name": "cream-cleanup",
                       LABEL_RUN: meta["name"], LABEL_RUN_UID: meta["uid"]},
        },
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 600,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "cleanup",
                    "image": spec.scheduling.image or config.stage_image,
                    "imagePullPolicy": config.image_pull_policy,
                    "command": [config.python, "-m", "cream_stages.cleanup", root],
                    "envFrom": [{"secretRef": {"name": secret, "optional": True}}],
                    "env": _base_env(config),
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                    "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
                }],
                "securityContext": pod_security_context(config),
                **({"serviceAccountName": spec.scheduling.service_account_name}
                   if spec.scheduling.service_account_name else {}),
            }},
        },
    }
