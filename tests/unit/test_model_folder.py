"""Spec of what makes a folder a usable Hugging Face model: config, every weight file, a tokenizer."""

import json

import pytest

from selfreward.trainer.model_folder import problems

COMPLETE = ("config.json", "model.safetensors", "tokenizer.json")


def index_of(*shards):
    """A safetensors index mapping one tensor to each named shard."""
    return json.dumps({"metadata": {}, "weight_map": {f"layer.{i}.weight": shard for i, shard in enumerate(shards)}})


def without(name, names=COMPLETE):
    return [other for other in names if other != name]


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(COMPLETE, id="safetensors-and-tokenizer-json"),
        pytest.param(("config.json", "model.safetensors", "tokenizer.model"), id="sentencepiece-tokenizer"),
        pytest.param(("config.json", "pytorch_model.bin", "tokenizer.json"), id="pytorch-bin-weights"),
        pytest.param(("config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                      "vocab.json", "merges.txt"), id="sharded-bin-and-bpe-vocab"),
    ],
)
def test_a_complete_model_folder_has_no_problems(names):
    assert problems(names) == []


def test_an_empty_folder_is_refused_as_empty():
    assert problems([]) == ["the folder is empty"]


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        pytest.param(without("config.json"), "no config.json", id="no-config"),
        pytest.param(without("model.safetensors"), "no weights (*.safetensors or pytorch_model*.bin)", id="no-weights"),
        pytest.param(without("tokenizer.json"), "no tokenizer (tokenizer.json, tokenizer.model, vocab.json)", id="no-tokenizer"),
    ],
)
def test_a_folder_missing_a_part_names_only_that_part(names, problem):
    assert problems(names) == [problem]


def test_a_folder_missing_every_part_names_each_of_them():
    found = problems(["README.md"])

    assert len(found) == 3
    assert [p.split(" ")[1] for p in found] == ["config.json", "weights", "tokenizer"]


def test_an_index_whose_shards_are_all_present_has_no_problems():
    names = ["config.json", "tokenizer.json", "model.safetensors.index.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    assert problems(names, index_of("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")) == []


def test_a_half_finished_upload_names_the_missing_shard():
    names = ["config.json", "tokenizer.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]

    (problem,) = problems(names, index_of("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))

    assert problem.startswith("1 of 2 weight shards named by the index are missing")
    assert "model-00002-of-00002.safetensors" in problem
    assert "model-00001-of-00002.safetensors" not in problem


@pytest.mark.parametrize(
    "index_text",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param(json.dumps({"metadata": {}}), id="no-weight-map"),
        pytest.param(json.dumps(["model.safetensors"]), id="a-list"),
    ],
)
def test_an_unreadable_index_is_a_problem(index_text):
    names = [*COMPLETE, "model.safetensors.index.json"]

    assert problems(names, index_text) == ["its weight index is not valid JSON with a weight_map"]
