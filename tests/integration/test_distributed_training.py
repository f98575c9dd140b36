"""Training with several processes, started the way both executors start it (torchrun, from the
operator's launch module), on CPU with the gloo backend: real TRL, real DeepSpeed, a tiny model.

The same global batch over one process or two must train the same model; ZeRO-3 must save a
plain folder; the reference log-probs computed once before DPO must give the loss a second,
resident reference model gives; LoRA must train and come out merged into a plain folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.training import LORA, Trained, train

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
