"""The images `make images` built (images/build.py), inspected and run with buildah: their user,
entrypoint and working directory are what the chart's Deployment and the operator's Job manifests
run; the operator image has the operator and no torch; the stages image imports every stage and
has torchrun. test_images.py checks the same intent on the Dockerfiles' text; these check the
result."""

from __future__ import annotations

import json
import subprocess

from image_runs import all_job_manifests, chart_deployment, container_of, run_in_image

from cream_operator.config import OperatorConfig
from cream_stages.contract import STAGES

UID = 10001


def config(reference: str) -> dict:
    out = subprocess.run(["buildah", "inspect", "--type", "image", reference], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["OCIv1"]["config"]


def in_image(reference: str, code: str, user: str | None = None) -> str:
    proc = run_in_image(reference, ["python", "-c", code], user=user)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_operator_image_runs_what_the_charts_deployment_runs(built_images):
    image = built_images["operator"]
    cfg = config(image)
    deploy = chart_deployment()["spec"]["template"]["spec"]
    (container,) = deploy["containers"]
    assert cfg["Entrypoint"] == container["command"] == ["python", "-m", "cream_operator"]
    assert cfg["User"] == f"{deploy['securityContext']['runAsUser']}:" \
                          f"{deploy['securityContext']['runAsGroup']}" == f"{UID}:{UID}"
    # The working directory and HOME are the chart's writable emptyDir (the root is read-only).
    assert cfg["WorkingDir"] == "/tmp" and "HOME=/tmp" in cfg["Env"]
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    out = in_image(image, "import os, kopf, kubernetes, prometheus_client, cream_operator.startup;"
                          "print(os.getuid(), os.getgid(), os.getcwd())")
    assert out.split() == [str(UID), str(UID), "/tmp"]
    proc = run_in_image(image, ["python", "-c", "import torch"])
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    proc = run_in_image(image, ["python", "-m", "cream_operator", "--help"])
    assert proc.returncode == 0 and "operator" in proc.stdout, proc.stderr


def test_stages_image_runs_what_the_operators_jobs_run(built_images):
    image = built_images["stages"]
    cfg = config(image)
    assert cfg["Entrypoint"] == ["python", "-m", "cream_stages"]
    assert cfg["User"] == f"{UID}:{UID}" and cfg["WorkingDir"] == "/tmp"
    op = OperatorConfig()
    assert (op.run_as_user, op.run_as_group) == (UID, UID)
    for job in all_job_manifests():
        container = container_of(job)
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == UID, job["metadata"]["name"]
        if container["command"][0] != "torchrun":
            assert container["command"] == cfg["Entrypoint"], job["metadata"]["name"]
    # Every stage the runner dispatches to imports, as the image's user, and torchrun is there.
    code = ("import importlib, os, shutil;"
            f"[importlib.import_module(f'cream_stages.{{s}}') for s in {list(STAGES)!r}];"
            "print(os.getuid(), shutil.which('torchrun'))")
    assert in_image(image, code).split() == [str(UID), "/opt/venv/bin/torchrun"]
    proc = run_in_image(image, ["python", "-m", "cream_stages", "sft", "--help"])
    assert proc.returncode == 0 and "--request" in proc.stdout, proc.stderr
