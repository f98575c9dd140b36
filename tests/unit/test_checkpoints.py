"""Spec of training checkpoints in storage: committed manifest last, resumed only by the stage that made them.

Storage is the real local filesystem under tmp_path.
"""

import shutil
from pathlib import Path

import pytest

from selfreward.trainer import checkpoints
from selfreward.trainer.checkpoints import Committed
from selfreward.trainer.storage import MANIFEST, IntegrityError, Storage, sha256_bytes

FINGERPRINT = "fp-of-this-stage"
LAYOUT = {"zeroStage": 3, "processes": 8}
FILES = {"model.safetensors": b"weights", "optimizer.pt": b"optimizer", "rng/state.pt": b"rng"}


@pytest.fixture
def storage():
    return Storage().with_lineage({"fingerprint": FINGERPRINT, "lineage": {"stage": "sft"}})


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "iter-01" / "checkpoints")


def saved(folder, files=FILES):
    """A checkpoint as the trainer saves it to local scratch."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def torn(root, step):
    """A checkpoint whose upload was cut off: its files, no manifest."""
    return saved(Path(checkpoints.folder(root, step)))


def committed(storage, root, step, fingerprint=FINGERPRINT, layout=LAYOUT):
    """A committed checkpoint made by the stage with `fingerprint` (other checkpoints are kept)."""
    uri = checkpoints.folder(root, step)
    stamped = storage.with_lineage({"fingerprint": fingerprint, "lineage": {}})
    stamped.commit(uri, stamped.upload_folder(torn(root, step), uri), stage="sft", step=step, layout=layout)
    return Committed(step, uri)


def commit(storage, root, scratch, step=200):
    """What the training callback does on one node: upload its files, then commit."""
    part = checkpoints.upload(storage, root, saved(scratch), step)
    checkpoints.commit(storage, root, [part], step, "sft", LAYOUT)


# --- choosing the checkpoint to resume from ---------------------------------------------------


def test_latest_is_the_newest_committed_checkpoint_of_the_stage(storage, root):
    committed(storage, root, 100)
    newest = committed(storage, root, 200)

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) == newest


def test_a_torn_checkpoint_is_never_chosen_even_when_newer(storage, root):
    newest = committed(storage, root, 200)
    torn(root, 300)

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) == newest


def test_a_checkpoint_of_another_fingerprint_is_never_chosen(storage, root):
    ours = committed(storage, root, 200)
    committed(storage, root, 300, fingerprint="made-from-other-inputs")

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) == ours


@pytest.mark.parametrize(
    "make_others",
    [
        pytest.param(lambda storage, root: None, id="no-checkpoints"),
        pytest.param(lambda storage, root: torn(root, 100), id="only-torn"),
        pytest.param(lambda storage, root: committed(storage, root, 100, fingerprint="other"), id="only-another-fingerprint"),
    ],
)
def test_without_a_checkpoint_of_the_stage_there_is_none_to_resume(storage, root, make_others):
    make_others(storage, root)

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) is None


def test_a_checkpoint_saved_with_another_zero_stage_or_process_count_is_not_resumed(storage, root):
    committed(storage, root, 300, layout={"zeroStage": 3, "processes": 16})

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) is None
    assert checkpoints.latest(storage, root, FINGERPRINT, {"zeroStage": 3, "processes": 16}) is not None


def test_steps_are_compared_as_numbers(storage, root):
    committed(storage, root, 900)
    newest = committed(storage, root, 1000)

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) == newest


# --- committing -------------------------------------------------------------------------------


def test_commit_uploads_every_file_with_its_sha256_and_the_stages_fingerprint(storage, root, tmp_path):
    commit(storage, root, tmp_path / "scratch")

    manifest = storage.read_manifest(checkpoints.folder(root, 200))
    assert manifest["files"] == {name: sha256_bytes(data) for name, data in FILES.items()}
    assert (manifest["fingerprint"], manifest["stage"], manifest["step"]) == (FINGERPRINT, "sft", 200)
    assert manifest["layout"] == LAYOUT


def test_a_checkpoint_saved_on_several_nodes_lists_every_nodes_files(storage, root, tmp_path):
    first = checkpoints.upload(storage, root, saved(tmp_path / "node-0", {"zero_rank_0.pt": b"0", "latest": b"200"}), 200)
    second = checkpoints.upload(storage, root, saved(tmp_path / "node-1", {"zero_rank_1.pt": b"1", "latest": b"200"}), 200)

    checkpoints.commit(storage, root, [first, second], 200, "sft", LAYOUT)

    manifest = storage.read_manifest(checkpoints.folder(root, 200))
    assert sorted(manifest["files"]) == ["latest", "zero_rank_0.pt", "zero_rank_1.pt"]


def test_two_nodes_saving_different_versions_of_one_file_commit_nothing(storage, root, tmp_path):
    first = checkpoints.upload(storage, root, saved(tmp_path / "node-0", {"trainer_state.json": b"a"}), 200)
    second = checkpoints.upload(storage, root, saved(tmp_path / "node-1", {"trainer_state.json": b"b"}), 200)

    with pytest.raises(ValueError, match="two nodes saved different trainer_state.json"):
        checkpoints.commit(storage, root, [first, second], 200, "sft", LAYOUT)
    assert checkpoints.committed(storage, root) == []


def test_commit_writes_the_manifest_after_every_file(storage, root, tmp_path):
    commit(storage, root, tmp_path / "scratch")

    folder = tmp_path / "iter-01" / "checkpoints" / "checkpoint-200"
    files = [path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST]
    assert (folder / MANIFEST).stat().st_mtime_ns >= max(path.stat().st_mtime_ns for path in files)


def test_commit_removes_every_other_checkpoint_of_the_stage(storage, root, tmp_path):
    committed(storage, root, 100)
    torn(root, 300)

    commit(storage, root, tmp_path / "scratch")

    assert checkpoints.committed(storage, root) == [Committed(200, checkpoints.folder(root, 200))]
    assert sorted(p.name for p in (tmp_path / "iter-01" / "checkpoints").iterdir()) == ["checkpoint-200"]


# --- downloading ------------------------------------------------------------------------------


def test_download_gives_a_fresh_copy_of_the_committed_files(storage, root, tmp_path):
    checkpoint = committed(storage, root, 200)
    scratch = tmp_path / "scratch"
    saved(scratch / "checkpoint-200", {"left-over.pt": b"from an earlier attempt"})

    local = checkpoints.download(storage, checkpoint, scratch)

    assert local == scratch / "checkpoint-200"
    assert {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()} == FILES


def test_download_refuses_a_file_changed_after_commit(storage, root, tmp_path):
    checkpoint = committed(storage, root, 200)
    (tmp_path / "iter-01" / "checkpoints" / "checkpoint-200" / "optimizer.pt").write_bytes(b"rewritten")

    with pytest.raises(IntegrityError, match="optimizer.pt"):
        checkpoints.download(storage, checkpoint, tmp_path / "scratch")


# --- removing ---------------------------------------------------------------------------------


def test_remove_all_removes_committed_and_torn_checkpoints(storage, root, tmp_path):
    committed(storage, root, 100)
    committed(storage, root, 200, fingerprint="other")
    torn(root, 300)

    checkpoints.remove_all(storage, root)

    assert list(storage.list(root)) == []
    assert list((tmp_path / "iter-01" / "checkpoints").iterdir()) == []


# --- after the model is committed -------------------------------------------------------------


def test_a_committed_model_leaves_no_checkpoints_even_when_an_earlier_attempt_died_before_removing_them(storage, tmp_path):
    from selfreward.trainer import training
    from selfreward.trainer.contract import StageConfig
    from tests.builders import stage_config

    iteration = tmp_path / "iter-01"
    config = StageConfig.model_validate(stage_config(
        stage="sft", iteration=1, shardCount=1, inputs={"model": str(tmp_path / "base")},
        outputs={"model": str(iteration / "model"), "checkpoints": str(iteration / "checkpoints")},
    ))
    model = str(iteration / "model")
    storage.commit(model, storage.upload_folder(saved(tmp_path / "trained"), model), stage="sft")
    committed(storage, str(iteration / "checkpoints"), 200)

    def must_not_train():
        raise AssertionError("the committed model was trained again")

    result = training.run_stage(config, storage, model_dir_for=None, recipe_for=must_not_train)

    assert result.shards[0].skipped
    assert list((iteration / "checkpoints").rglob("*")) == []


# --- uploading in the background ----------------------------------------------------------------


def uploads(storage, root, scratch, node=0, nodes=1, commits=True, part_timeout=30.0):
    return checkpoints.Uploads(storage, root, "sft", LAYOUT, scratch, node=node, nodes=nodes, commits=commits,
                               part_timeout=part_timeout)


def test_a_checkpoint_uploaded_in_the_background_is_committed_when_finished(storage, root, tmp_path):
    background = uploads(storage, root, tmp_path / "uploading")

    background.start(saved(tmp_path / "trainer"), 200)
    error = background.finish()

    assert error is None
    manifest = storage.read_manifest(checkpoints.folder(root, 200))
    assert manifest["files"] == {name: sha256_bytes(data) for name, data in FILES.items()}
    assert not list((tmp_path / "uploading").iterdir())  # the upload's links are gone


def test_the_trainer_may_delete_its_copy_while_the_upload_goes_on(storage, root, tmp_path):
    background = uploads(storage, root, tmp_path / "uploading")
    local = saved(tmp_path / "trainer")

    background.start(local, 200)
    shutil.rmtree(local)  # what the Trainer's rotation does when it saves the next checkpoint
    background.finish()

    assert checkpoints.latest(storage, root, FINGERPRINT, LAYOUT) == Committed(200, checkpoints.folder(root, 200))


def test_a_failed_background_upload_is_reported_by_finish_and_commits_nothing(storage, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the checkpoints folder should be")
    background = uploads(storage, str(blocked / "checkpoints"), tmp_path / "uploading")

    background.start(saved(tmp_path / "trainer"), 200)

    assert background.finish().startswith(("NotADirectoryError", "FileExistsError"))
    assert background.finish() is not None  # still the last upload's outcome


def test_two_nodes_parts_are_committed_together_by_the_first(storage, root, tmp_path):
    first = uploads(storage, root, tmp_path / "node-0" / "uploading", node=0, nodes=2, commits=True)
    second = uploads(storage, root, tmp_path / "node-1" / "uploading", node=1, nodes=2, commits=False)

    first.start(saved(tmp_path / "node-0" / "trainer", {"zero_pp_rank_0.pt": b"0", "model.safetensors": b"w"}), 200)
    second.start(saved(tmp_path / "node-1" / "trainer", {"zero_pp_rank_1.pt": b"1", "model.safetensors": b"w"}), 200)

    assert (second.finish(), first.finish()) == (None, None)
    files = storage.read_manifest(checkpoints.folder(root, 200))["files"]
    assert sorted(files) == ["model.safetensors", "zero_pp_rank_0.pt", "zero_pp_rank_1.pt"]


def test_a_node_whose_part_failed_stops_the_commit_naming_it(storage, root, tmp_path):
    first = uploads(storage, root, tmp_path / "node-0" / "uploading", node=0, nodes=2, commits=True)
    part = Path(checkpoints.folder(root, 200)) / checkpoints.PARTS / "node-1.json"
    part.parent.mkdir(parents=True)
    part.write_text('{"error": "OSError: no space left on device"}')  # what node 1's uploader leaves

    first.start(saved(tmp_path / "node-0" / "trainer"), 200)

    assert "node-1.json: OSError: no space left on device" in first.finish()
    assert storage.read_manifest(checkpoints.folder(root, 200)) is None


def test_a_node_that_never_uploads_its_part_times_the_commit_out(storage, root, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "PART_POLL_SECONDS", 0.01)
    first = uploads(storage, root, tmp_path / "node-0" / "uploading", node=0, nodes=2, commits=True, part_timeout=0.1)

    first.start(saved(tmp_path / "node-0" / "trainer"), 200)

    assert "1 of 2 nodes uploaded their part" in first.finish()
    assert storage.read_manifest(checkpoints.folder(root, 200)) is None


def test_markers_an_earlier_attempt_left_are_cleared_before_the_nodes_upload(storage, root, tmp_path):
    stale = Path(checkpoints.folder(root, 200)) / checkpoints.PARTS / "node-1.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"files": {"zero_pp_rank_1.pt": "hash-of-the-earlier-attempt"}}')
    first = uploads(storage, root, tmp_path / "node-0" / "uploading", node=0, nodes=2, commits=True)
    second = uploads(storage, root, tmp_path / "node-1" / "uploading", node=1, nodes=2, commits=False)

    first.clear(200)  # world rank 0, before the barrier after which every node uploads
    first.start(saved(tmp_path / "node-0" / "trainer", {"zero_pp_rank_0.pt": b"0"}), 200)
    second.start(saved(tmp_path / "node-1" / "trainer", {"zero_pp_rank_1.pt": b"1"}), 200)

    assert (second.finish(), first.finish()) == (None, None)
    files = storage.read_manifest(checkpoints.folder(root, 200))["files"]
    assert files == {"zero_pp_rank_0.pt": sha256_bytes(b"0"), "zero_pp_rank_1.pt": sha256_bytes(b"1")}


def test_a_checkpoint_that_cannot_be_linked_aside_is_reported_by_finish_not_raised(storage, root, tmp_path):
    background = uploads(storage, root, tmp_path / "uploading", node=1, nodes=2, commits=False)

    background.start(tmp_path / "no-such-checkpoint", 200)  # as if the save had left nothing

    assert background.finish().startswith("FileNotFoundError: linking checkpoint 200 aside")
    marker = Path(checkpoints.folder(root, 200)) / checkpoints.PARTS / "node-1.json"
    assert "linking checkpoint 200 aside" in marker.read_text()  # world rank 0 stops waiting for it
