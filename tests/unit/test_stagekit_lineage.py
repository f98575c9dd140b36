"""Spec of lineage: a committed output is reused only when it was made from the same inputs.

Storage is the real local filesystem under tmp_path. Stage programs print progress notes on stderr.
"""

import pytest

from selfreward.trainer.contract import SHARD_INDEX_ENV, StageConfig
from selfreward.trainer.stagekit import (
    ShardMismatch,
    changes,
    lineage_of,
    read_sharded,
    run_shards,
    run_single,
    shard_folder,
)
from selfreward.trainer.storage import ArtifactMissing, Storage, join
from tests.builders import stage_config

ROWS = "rows.jsonl"


@pytest.fixture(autouse=True)
def every_shard(monkeypatch):
    """Outside an Indexed Job a stage program runs every shard."""
    monkeypatch.delenv(SHARD_INDEX_ENV, raising=False)


@pytest.fixture
def storage():
    return Storage()


@pytest.fixture
def inputs(tmp_path, storage):
    """A seed file and a committed model folder, as a stage's inputs."""
    prompts = tmp_path / "seed" / "prompts.jsonl"
    prompts.parent.mkdir()
    prompts.write_text('{"prompt": "Name a colour."}\n')
    model = str(tmp_path / "iter-01" / "model")
    storage.commit(model, storage.write_jsonl_file(model, "weights.jsonl", [{"w": 1}]))
    return {"prompts": str(prompts), "model": model}


def config_of(inputs, output, samples=3, shard_count=1, **overrides):
    return StageConfig.model_validate(
        stage_config(inputs=inputs, outputs={"candidates": output}, shardCount=shard_count,
                     spec={"judge": {"samples": samples}}, **overrides)
    )


def commit_rows(storage, folder, rows, **content):
    return storage.commit(folder, storage.write_jsonl_file(folder, ROWS, rows), **content)


class Work:
    """A stage's work: writes one row and commits its folder, counting its calls."""

    def __init__(self, storage, folder_of):
        self.storage, self.folder_of, self.calls = storage, folder_of, []

    def __call__(self, index=0):
        self.calls.append(index)
        commit_rows(self.storage, self.folder_of(index), [{"shard": index}], metrics={"rows": 1})
        return {"rows": 1}


# --- lineage ----------------------------------------------------------------------------------


def test_the_same_config_and_inputs_have_the_same_fingerprint(tmp_path, storage, inputs):
    config = config_of(inputs, str(tmp_path / "out"))

    assert lineage_of(config, storage)["fingerprint"] == lineage_of(config, storage)["fingerprint"]


def test_the_lineage_records_each_input_with_its_identity(tmp_path, storage, inputs):
    lineage = lineage_of(config_of(inputs, str(tmp_path / "out")), storage)["lineage"]

    assert lineage["inputs"]["prompts"] == {"uri": inputs["prompts"], "identity": storage.identity(inputs["prompts"])}
    assert lineage["inputs"]["model"] == {"uri": inputs["model"], "identity": storage.identity(inputs["model"])}
    assert lineage["spec"] == {"judge": {"samples": 3}}


def test_rewriting_an_input_file_changes_its_identity_and_the_fingerprint(tmp_path, storage, inputs):
    config = config_of(inputs, str(tmp_path / "out"))
    before = lineage_of(config, storage)

    (tmp_path / "seed" / "prompts.jsonl").write_text('{"prompt": "Name a number."}\n')
    after = lineage_of(config, storage)

    assert after["lineage"]["inputs"]["prompts"]["identity"] != before["lineage"]["inputs"]["prompts"]["identity"]
    assert after["fingerprint"] != before["fingerprint"]


def test_recommitting_an_input_folder_with_other_content_changes_the_fingerprint(tmp_path, storage, inputs):
    config = config_of(inputs, str(tmp_path / "out"))
    before = lineage_of(config, storage)

    commit_rows(storage, inputs["model"], [{"w": 2}])

    assert lineage_of(config, storage)["fingerprint"] != before["fingerprint"]


def judge_config(inputs, candidates, shards=None):
    """Judge of 2 shards reading 2 candidate shards; `shards`: the ones this process runs."""
    return StageConfig.model_validate(stage_config(
        stage="judge", inputs={"model": inputs["model"], "candidates": candidates}, inputShards={"candidates": 2},
        outputs={"judgements": "unused-j", "pairs": "unused-p"}, shardCount=2, shards=shards, spec={"judge": {"samples": 3}}))


def commit_candidates(storage, candidates, index, fingerprint, rows):
    stamped = storage.with_lineage({"fingerprint": fingerprint})
    commit_rows(stamped, shard_folder(candidates, index, 2), rows)


def test_a_sharded_input_is_the_same_input_to_every_shard_that_reads_it(tmp_path, storage, inputs):
    """Pod i of a generate+judge Job judges shard i while shard j may not be written yet."""
    candidates = str(tmp_path / "iter-02" / "candidates")
    commit_candidates(storage, candidates, 0, "made-by-F", [{"c": "a"}])
    judged_first = lineage_of(judge_config(inputs, candidates, shards=[0]), storage)

    commit_candidates(storage, candidates, 1, "made-by-F", [{"c": "b"}, {"c": "c"}])
    judged_second = lineage_of(judge_config(inputs, candidates, shards=[1]), storage)
    judged_together = lineage_of(judge_config(inputs, candidates), storage)

    assert judged_first["fingerprint"] == judged_second["fingerprint"] == judged_together["fingerprint"]


def test_a_sharded_input_made_from_other_inputs_changes_the_fingerprint(tmp_path, storage, inputs):
    candidates = str(tmp_path / "iter-02" / "candidates")
    commit_candidates(storage, candidates, 0, "made-by-F", [{"c": "a"}])
    before = lineage_of(judge_config(inputs, candidates, shards=[0]), storage)

    commit_candidates(storage, candidates, 0, "made-by-G", [{"c": "a"}])

    assert lineage_of(judge_config(inputs, candidates, shards=[0]), storage)["fingerprint"] != before["fingerprint"]


def test_a_missing_input_is_refused_by_name(tmp_path, storage, inputs):
    config = config_of({**inputs, "prompts": str(tmp_path / "nowhere.jsonl")}, str(tmp_path / "out"))

    with pytest.raises(ArtifactMissing, match="nowhere.jsonl"):
        lineage_of(config, storage)


def test_changes_names_an_edited_spec_field(tmp_path, storage, inputs):
    old = lineage_of(config_of(inputs, str(tmp_path / "out"), samples=3), storage)
    new = lineage_of(config_of(inputs, str(tmp_path / "out"), samples=2), storage)

    assert changes(old["lineage"], new["lineage"]) == ["spec.judge.samples: 3 -> 2"]


def test_changes_names_a_rewritten_input_by_its_identity(tmp_path, storage, inputs):
    config = config_of(inputs, str(tmp_path / "out"))
    old = lineage_of(config, storage)["lineage"]
    (tmp_path / "seed" / "prompts.jsonl").write_text('{"prompt": "Name a number."}\n')

    (change,) = changes(old, lineage_of(config, storage)["lineage"])

    assert change.startswith("inputs.prompts.identity: ")


def test_changes_from_an_output_made_before_lineage_says_so(tmp_path, storage, inputs):
    new = lineage_of(config_of(inputs, str(tmp_path / "out")), storage)["lineage"]

    assert changes(None, new) == ["made before lineage was recorded"]


# --- skipping what was made from the same inputs, remaking what was not -------------------------


def test_run_single_skips_an_output_committed_with_the_same_fingerprint(tmp_path, storage, inputs):
    output = str(tmp_path / "out")
    config = config_of(inputs, output)
    stamped = storage.with_lineage(lineage_of(config, storage))
    commit_rows(stamped, output, [{"kept": True}], metrics={"rows": 7})
    work = Work(stamped, lambda _: output)

    result = run_single(config, stamped, output, work)

    assert work.calls == []
    assert [(s.index, s.skipped, s.metrics) for s in result.shards] == [(0, True, {"rows": 7})]


def test_run_single_remakes_an_output_committed_with_another_fingerprint(tmp_path, storage, inputs):
    output = str(tmp_path / "out")
    old = storage.with_lineage(lineage_of(config_of(inputs, output, samples=3), storage))
    commit_rows(old, output, [{"old": True}])
    (tmp_path / "out" / "stale.jsonl").write_text("{}\n")
    config = config_of(inputs, output, samples=2)
    stamped = storage.with_lineage(lineage_of(config, storage))
    work = Work(stamped, lambda _: output)

    result = run_single(config, stamped, output, work)

    assert work.calls == [0]
    assert [(s.index, s.skipped) for s in result.shards] == [(0, False)]
    assert not (tmp_path / "out" / "stale.jsonl").exists()
    assert storage.read_manifest(output)["fingerprint"] == stamped.lineage["fingerprint"]


def test_run_single_makes_an_output_that_was_never_committed(tmp_path, storage, inputs):
    output = str(tmp_path / "out")
    config = config_of(inputs, output)
    stamped = storage.with_lineage(lineage_of(config, storage))
    work = Work(stamped, lambda _: output)

    run_single(config, stamped, output, work)

    assert work.calls == [0]


def test_run_shards_runs_only_the_shards_not_committed_from_the_same_inputs(tmp_path, storage, inputs):
    output = str(tmp_path / "out")
    config = config_of(inputs, output, samples=2, shard_count=3)
    stamped = storage.with_lineage(lineage_of(config, storage))
    old = storage.with_lineage(lineage_of(config_of(inputs, output, samples=3, shard_count=3), storage))
    commit_rows(stamped, shard_folder(output, 0, 3), [{"shard": 0}], metrics={"rows": 1})
    commit_rows(old, shard_folder(output, 1, 3), [{"old": True}], metrics={"rows": 5})
    stale = tmp_path / "out" / "shard-00001-of-00003" / "stale.jsonl"
    stale.write_text("{}\n")
    work = Work(stamped, lambda index: shard_folder(output, index, 3))

    result = run_shards(config, stamped, output, work)

    assert work.calls == [1, 2]
    assert [(s.index, s.skipped) for s in result.shards] == [(0, True), (1, False), (2, False)]
    assert result.metrics() == {"rows": 3}
    assert not stale.exists()


# --- reading a sharded output -----------------------------------------------------------------


def commit_shards(storage, folder, count, indexes=None, fingerprint="made-by-generate"):
    stamped = storage.with_lineage({"fingerprint": fingerprint, "lineage": {}})
    for index in range(count) if indexes is None else indexes:
        commit_rows(stamped, shard_folder(folder, index, count), [{"shard": index, "of": count}])


def test_read_sharded_reads_every_row_of_every_shard_in_order(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 3)

    assert read_sharded(storage, folder, ROWS, 3) == [{"shard": i, "of": 3} for i in range(3)]


def test_read_sharded_ignores_shards_made_with_another_count(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 2)
    commit_shards(storage, folder, 3, fingerprint="an-earlier-run")

    assert read_sharded(storage, folder, ROWS, 2) == [{"shard": 0, "of": 2}, {"shard": 1, "of": 2}]


def test_read_sharded_refuses_when_only_another_count_exists(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 3)

    with pytest.raises(ShardMismatch, match="expected 2 shards"):
        read_sharded(storage, folder, ROWS, 2)


def test_read_sharded_refuses_shards_made_from_different_inputs(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 2, indexes=[0], fingerprint="first")
    commit_shards(storage, folder, 2, indexes=[1], fingerprint="second")

    with pytest.raises(ShardMismatch, match="different inputs"):
        read_sharded(storage, folder, ROWS, 2)


def test_read_sharded_refuses_a_partial_stage_naming_the_missing_shards(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 3, indexes=[0, 2])

    with pytest.raises(ArtifactMissing, match=r"2 of 3 shards committed, missing \[1\]"):
        read_sharded(storage, folder, ROWS, 3)


def test_read_sharded_ignores_a_shard_without_its_manifest(tmp_path, storage):
    folder = str(tmp_path / "candidates")
    commit_shards(storage, folder, 2, indexes=[0])
    storage.write_jsonl_file(shard_folder(folder, 1, 2), ROWS, [{"torn": True}])

    with pytest.raises(ArtifactMissing, match=r"missing \[1\]"):
        read_sharded(storage, folder, ROWS, 2)


def test_read_sharded_of_nothing_committed_is_missing(tmp_path, storage):
    with pytest.raises(ArtifactMissing, match="no committed shards"):
        read_sharded(storage, join(str(tmp_path), "candidates"), ROWS, 2)
