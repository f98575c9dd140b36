"""Spec of the folders a node's training processes share: cleared once per launch, filled once."""

import os

import pytest

from selfreward.trainer import nodelocal


@pytest.fixture
def launched(monkeypatch):
    """This process as one of two that one torchrun started."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")


def test_the_first_process_of_a_launch_clears_the_folder_and_the_others_keep_its_work(tmp_path, launched):
    folder = tmp_path / "scratch"
    (folder / "left-by-an-earlier-attempt").mkdir(parents=True)

    nodelocal.fresh_folder(folder)
    (folder / "written-by-a-sibling").touch()
    nodelocal.fresh_folder(folder)  # a second process of the same launch

    assert sorted(path.name for path in folder.iterdir()) == [".launch", "written-by-a-sibling"]


def test_a_new_launch_clears_it_again(tmp_path, launched, monkeypatch):
    folder = tmp_path / "scratch"
    nodelocal.fresh_folder(folder)
    (folder / "from-the-last-launch").touch()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-2")

    nodelocal.fresh_folder(folder)

    assert [path.name for path in folder.iterdir()] == [".launch"]


def test_a_process_alone_clears_it_every_time(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    folder = tmp_path / "scratch"
    nodelocal.fresh_folder(folder)
    (folder / "from-before").touch()

    nodelocal.fresh_folder(folder)

    assert [path.name for path in folder.iterdir()] == [".launch"]


def test_a_folder_is_filled_once_and_then_reused(tmp_path):
    fills = []

    def fill(target):
        fills.append(target)
        target.mkdir()
        (target / "weights").write_bytes(b"w")

    nodelocal.filled_once(tmp_path / "checkpoint", fill)
    nodelocal.filled_once(tmp_path / "checkpoint", fill)

    assert fills == [tmp_path / "checkpoint"] and (tmp_path / "checkpoint" / "weights").exists()


def test_a_fill_that_died_halfway_is_made_again(tmp_path):
    def dies(target):
        target.mkdir()
        (target / "half").touch()
        raise OSError("connection reset")

    with pytest.raises(OSError):
        nodelocal.filled_once(tmp_path / "checkpoint", dies)
    nodelocal.filled_once(tmp_path / "checkpoint", lambda target: target.mkdir())

    assert list((tmp_path / "checkpoint").iterdir()) == []


def test_the_launch_is_named_by_its_launcher_process(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run-1")

    assert nodelocal.launch_id().startswith(f"run-1/{os.getppid()}/")
