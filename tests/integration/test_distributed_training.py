"""Training with several processes, started the way both executors start it (torchrun, from the
operator's launch module), on CPU with the gloo backend: real TRL, real DeepSpeed, a tiny model.

The same global batch over one process or two must train the same model; ZeRO-3 must save a
plain folder; the reference log-probs computed once before DPO must give the loss a second,
resident reference model gives; LoRA must train and come out merged into a plain folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from selfreward.operator import launch
from selfreward.operator import plan as planner
from selfreward.operator.stageconfig import stage_config
from selfreward.trainer.judge import PAIRS_FILE
from selfreward.trainer.stagekit import shard_folder
from selfreward.trainer.storage import Storage
from tests.builders import defaulted_spec
from tests.fixtures.models import SEED

pytestmark = pytest.mark.integration

# 90 SFT examples and 60 pairs: global batches of 6 and 60 divide them, so no process ever gets a
# partial or padded batch, and one DPO step is all of them.
SFT = [("sft.batchSize", 6), ("sft.microBatchSize", 3), ("sft.learningRate", 2e-3), ("sft.finalLearningRate", 2e-4),
       ("sft.dropout", 0.0), ("sft.maxLength", 1536)]
DPO = [("dpo.batchSize", 60), ("dpo.microBatchSize", 30), ("dpo.learningRate", 1e-3), ("dpo.finalLearningRate", 1e-4),
       ("dpo.dropout", 0.0), ("dpo.maxLength", 256)]
LORA = {"rank": 8, "alpha": 16, "dropout": 0.0}


@dataclass
class Trained:
    summary: dict[str, Any]
    model: Path

    def tensors(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.model / "model.safetensors"))


def train(folder: Path, stage: str, processes: int, *edits: tuple[str, Any], base: Path) -> Trained:
    """One training stage of a one-iteration run (iteration 2 for dpo), launched with `processes`."""
    iteration = 1 if stage == "sft" else 2
    spec = defaulted_spec(("baseModel.uri", str(base)), ("seed.instructions", str(SEED / "ift.jsonl")),
                          ("seed.evaluations", str(SEED / "eft.jsonl")), ("placement.training.processesPerReplica", processes),
                          *(SFT if stage == "sft" else DPO), *edits)
    root = str(folder / "storage")
    step = planner.step_for(spec, root, iteration, stage, 1)
    if stage == "dpo":
        step.inputs["model"] = str(base)  # M_t: the tiny model stands in for M1
        commit_pairs(step.inputs["pairs"])
    config = stage_config(SimpleNamespace(name="distributed", namespace="default", spec=spec), root, step, folder.name)
    command = launch.training_command(launch.local_launcher(sys.executable), 1, processes, launch.local_rendezvous(),
                                      ["-m", "selfreward.trainer", stage, "--config", json.dumps(config)])
    process = subprocess.run(command, capture_output=True, text=True, timeout=900,
                             env={**os.environ, **launch.LOCAL_ENVIRONMENT, "SELFREWARD_WORKDIR": str(folder / "work")})
    summaries = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert process.returncode == 0 and len(summaries) == 1, process.stdout + process.stderr[-6000:]
    assert summaries[0]["ok"], summaries[0]
    return Trained(summaries[0], Path(step.outputs["model"]))


def commit_pairs(folder: str) -> None:
    """One committed shard of pairs: each seed answer chosen over the next prompt's answer, cut short."""
    rows = [json.loads(line) for line in (SEED / "ift.jsonl").read_text().splitlines() if line.strip()]
    pairs = [{"prompt": row["prompt"], "chosen": row["response"],
              "rejected": " ".join(rows[(i + 1) % len(rows)]["response"].split()[:20])} for i, row in enumerate(rows)]
    storage, shard = Storage().with_lineage({"fingerprint": "pairs", "lineage": {}}), shard_folder(folder, 0, 1)
    storage.commit(shard, storage.write_jsonl_file(shard, PAIRS_FILE, pairs), stage="judge")


def largest_difference(first: Trained, second: Trained) -> float:
    a, b = first.tensors(), second.tensors()
    assert sorted(a) == sorted(b)
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


def largest_change(trained: Trained, base: Path) -> float:
    from safetensors.torch import load_file

    before, after = load_file(str(base / "model.safetensors")), trained.tensors()
    return max((after[name].float() - before[name].float()).abs().max().item() for name in before)


@pytest.fixture(scope="module")
def sft_runs(tiny_model, tmp_path_factory) -> dict[str, Trained]:
    return {name: train(tmp_path_factory.mktemp(name), "sft", processes, ("sft.zeroStage", zero), base=tiny_model)
            for name, processes, zero in (("one", 1, 0), ("ddp", 2, 0), ("zero3", 2, 3))}


@pytest.fixture(scope="module")
def dpo_runs(tiny_model, tmp_path_factory) -> dict[str, Trained]:
    runs = (("resident", 1, 0, "model"), ("precomputed", 1, 0, "precomputed"), ("precomputed-zero3", 2, 3, "precomputed"))
    return {name: train(tmp_path_factory.mktemp(name), "dpo", processes, ("dpo.zeroStage", zero), ("dpo.reference", reference),
                        base=tiny_model)
            for name, processes, zero, reference in runs}


# --- the same model from one process or two ----------------------------------------------------


def test_two_processes_train_the_same_model_as_one_for_the_same_global_batch(sft_runs, tiny_model):
    one, two = sft_runs["one"], sft_runs["ddp"]

    assert (one.summary["metrics"]["processes"], two.summary["metrics"]["processes"]) == (1, 2)
    assert one.summary["metrics"]["steps"] == two.summary["metrics"]["steps"] == 15
    assert largest_change(one, tiny_model) > 1e-3  # it trained
    assert largest_difference(one, two) <= 1e-6 * max(1.0, largest_change(one, tiny_model))


def test_zero3_over_two_processes_trains_the_same_model_within_tolerance(sft_runs, tiny_model):
    one, zero3 = sft_runs["one"], sft_runs["zero3"]

    assert zero3.summary["metrics"]["zeroStage"] == 3
    assert largest_difference(one, zero3) <= 0.01 * largest_change(one, tiny_model)


def test_zero3_saves_a_plain_folder_with_every_weight_whole(sft_runs, tiny_model):
    from safetensors.torch import load_file

    base, saved = load_file(str(tiny_model / "model.safetensors")), sft_runs["zero3"].tensors()

    assert {name: tuple(t.shape) for name, t in saved.items()} == {name: tuple(t.shape) for name, t in base.items()}
    assert {path.name for path in sft_runs["zero3"].model.iterdir()} >= {"config.json", "model.safetensors",
                                                                         "tokenizer.json", "_manifest.json"}
    assert not [path.name for path in sft_runs["zero3"].model.iterdir() if path.name.startswith("global_step")]


# --- the DPO reference ---------------------------------------------------------------------------


def test_the_precomputed_reference_gives_the_loss_of_a_resident_reference_model(dpo_runs):
    resident, precomputed = dpo_runs["resident"].summary["metrics"], dpo_runs["precomputed"].summary["metrics"]

    assert resident["steps"] == precomputed["steps"] == 1
    assert precomputed["trainLoss"] == pytest.approx(resident["trainLoss"], abs=1e-5)
    assert largest_difference(dpo_runs["resident"], dpo_runs["precomputed"]) <= 1e-5


def test_the_precomputed_reference_holds_across_processes_under_zero3(dpo_runs):
    resident, sharded = dpo_runs["resident"].summary["metrics"], dpo_runs["precomputed-zero3"].summary["metrics"]

    assert (sharded["processes"], sharded["zeroStage"]) == (2, 3)
    assert sharded["trainLoss"] == pytest.approx(resident["trainLoss"], abs=1e-4)


# --- LoRA ----------------------------------------------------------------------------------------


def test_lora_trains_adapters_and_saves_them_merged_into_a_plain_folder(tiny_model, tmp_path):
    from safetensors.torch import load_file

    trained = train(tmp_path, "sft", 2, ("sft.zeroStage", 3), ("sft.lora", LORA), base=tiny_model)

    base, merged = load_file(str(tiny_model / "model.safetensors")), trained.tensors()
    assert sorted(merged) == sorted(base)  # no adapter tensors: merged
    assert not (trained.model / "adapter_config.json").exists()
    changed = {name for name in base if not (merged[name] == base[name]).all()}
    assert any("q_proj" in name for name in changed) and any("mlp" in name for name in changed)
    assert "model.embed_tokens.weight" not in changed  # LoRA adapts linear layers only
