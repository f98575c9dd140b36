"""Training with several processes, started the way both executors start it (torchrun, from the
operator's launch module), on CPU with the gloo backend: real TRL, real DeepSpeed, a tiny model.

The same global batch over one process or two must train the same model; ZeRO-3 must save a
plain folder, and a checkpoint saved on two nodes (two torchrun agents with separate scratch)
must resume on two fresh ones; the reference log-probs computed once before DPO must give the loss a second,
resident reference model gives; LoRA must train and come out merged into a plain folder.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.fixtures.cluster import wait_for
from tests.fixtures.training import LORA, Trained, finished, launch_nodes, stage_program, train

pytestmark = pytest.mark.integration


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
    # Not bit-equal: the sums run in another order (gloo's allreduce, half-batch matrix shapes), and
    # Adam turns that rounding into visible steps for weights whose gradients are near zero: 0.1% of
    # the change on a CPU with AMX, under 1e-6 on the machine before it.
    assert largest_difference(one, two) <= 0.005 * largest_change(one, tiny_model)


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


def test_a_checkpoint_saved_on_two_nodes_resumes_on_two_fresh_nodes(sft_runs, tiny_model, tmp_path):
    # Two torchrun agents, one process each, with separate scratch: each node holds only its own
    # ZeRO-3 shards, so the committed checkpoint is complete only if both uploaded their part.
    program, model = stage_program(tmp_path, "sft", 1, ("sft.zeroStage", 3), ("sft.checkpointEvery", 5),
                                   base=tiny_model, nodes=2)
    first = launch_nodes(tmp_path / "first", program, 2, env={"SELFREWARD_FAILPOINT": "checkpoint/sft/10"})
    try:
        rank0_log = tmp_path / "first" / "node-0" / "stderr"
        wait_for(lambda: "failpoint checkpoint/sft/10 reached" in rank0_log.read_text() or
                 any(agent.poll() is not None for agent in first), 600, "checkpoint 10 to be uploaded")
        assert all(agent.poll() is None for agent in first), rank0_log.read_text()[-4000:]
    finally:
        for agent in first:
            agent.send_signal(signal.SIGKILL)
            agent.wait()
    checkpoint5 = tmp_path / "storage" / "iter-01" / "checkpoints" / "checkpoint-5"
    shards = [name for name in json.loads((checkpoint5 / "_manifest.json").read_text())["files"] if "zero_pp_rank" in name]
    assert {name.split("zero_pp_rank_")[1][0] for name in shards} == {"0", "1"}  # both nodes' shards

    second = launch_nodes(tmp_path / "second", program, 2)
    for agent in second:
        agent.wait(timeout=900)
    out = tmp_path / "second" / "node-0"
    resumed = finished(second[0].returncode, (out / "stdout").read_text(), (out / "stderr").read_text(), model)

    assert second[1].returncode == 0
    metrics = resumed.summary["metrics"]
    assert (metrics["resumedFromStep"], metrics["steps"], metrics["processes"]) == (5, 15, 2)
    assert largest_difference(sft_runs["zero3"], resumed) <= 0.01 * largest_change(sft_runs["zero3"], tiny_model)


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
