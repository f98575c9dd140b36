"""Spec of Storage on the local filesystem: model folders, integrity, identities, and hf:// without a hub.

Storage is the real local filesystem under tmp_path; hf:// is asked in a child process, since
huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT once, when it is imported.
"""

import json
import os
import subprocess
import sys

import pytest

from selfreward.trainer.storage import (
    MANIFEST,
    ArtifactMissing,
    IntegrityError,
    ModelFolderError,
    Storage,
    sha256_file,
    sha256_json,
)

MODEL_FILES = {"config.json": '{"model_type": "llama"}', "model.safetensors": "weights", "tokenizer.json": "{}"}
# A port nothing listens on, on the loopback interface: the hub is asked and refuses at once.
CLOSED_PORT = "http://127.0.0.1:9"


@pytest.fixture
def storage():
    return Storage()


def model_folder(path, files=MODEL_FILES):
    """A Hugging Face model folder as save_pretrained writes it (or a user copied it)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def committed_model(storage, path):
    """A model folder committed by a stage: a manifest with each file's sha256."""
    model_folder(path)
    storage.commit(str(path), {name: sha256_file(path / name) for name in MODEL_FILES})
    return path


def refusal(storage, uri):
    with pytest.raises(ModelFolderError) as refused:
        storage.inspect_model(uri)
    return str(refused.value)


# --- local model folders ----------------------------------------------------------------------


def test_an_empty_model_folder_is_refused_as_empty_naming_its_path(storage, tmp_path):
    (tmp_path / "model").mkdir()

    message = refusal(storage, str(tmp_path / "model"))

    assert "the folder is empty" in message
    assert str(tmp_path / "model") in message


def test_a_missing_model_folder_is_refused_as_not_existing(storage, tmp_path):
    message = refusal(storage, str(tmp_path / "nowhere"))

    assert message == f"model folder {tmp_path / 'nowhere'} does not exist"


def test_a_model_folder_without_a_tokenizer_is_refused_naming_what_is_missing(storage, tmp_path):
    files = {name: text for name, text in MODEL_FILES.items() if name != "tokenizer.json"}

    message = refusal(storage, str(model_folder(tmp_path / "model", files)))

    assert "no tokenizer" in message
    assert "save_pretrained" in message


def test_a_half_uploaded_sharded_model_is_refused_naming_the_missing_shard(storage, tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": "{}", "tokenizer.json": "{}", "model.safetensors.index.json": json.dumps(index),
             "model-00001-of-00002.safetensors": "half"}

    message = refusal(storage, str(model_folder(tmp_path / "model", files)))

    assert "model-00002-of-00002.safetensors" in message


def test_a_plain_model_folder_is_accepted_with_its_files(storage, tmp_path):
    folder = model_folder(tmp_path / "model")

    listing = storage.inspect_model(str(folder))

    assert sorted(listing.files) == sorted(MODEL_FILES)
    assert listing.manifest is None


def test_a_plain_local_model_folder_is_used_in_place(storage, tmp_path):
    folder = model_folder(tmp_path / "model")

    assert storage.local_folder(str(folder)) == folder


def test_a_committed_local_model_is_used_in_place(storage, tmp_path):
    folder = committed_model(storage, tmp_path / "model")

    assert storage.local_folder(str(folder)) == folder
    assert MANIFEST not in storage.inspect_model(str(folder)).files


def test_a_committed_local_model_whose_weights_changed_is_refused(storage, tmp_path):
    folder = committed_model(storage, tmp_path / "model")
    (folder / "model.safetensors").write_text("other weights")

    with pytest.raises(IntegrityError, match="model.safetensors"):
        storage.local_folder(str(folder))


# --- hf:// where no hub can be reached --------------------------------------------------------


ASK_THE_HUB = """
import json, sys
from selfreward.trainer.storage import Storage
try:
    getattr(Storage(), sys.argv[1])("hf://org/name")
    print(json.dumps({"error": None}))
except Exception as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
"""
WITHOUT_A_HUB = [
    pytest.param({"HF_HUB_OFFLINE": "1"}, id="offline"),
    pytest.param({"HF_ENDPOINT": CLOSED_PORT}, id="endpoint-refuses"),
]
HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def ask_the_hub(method, environment, home):
    """What Storage().<method>("hf://org/name") raises in a process with `environment`."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES + PROXY_VARIABLES}
    env |= {"HF_HOME": str(home), "NO_PROXY": "*", **environment}
    done = subprocess.run([sys.executable, "-c", ASK_THE_HUB, method], env=env, capture_output=True, text=True,
                          timeout=50, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["inspect_model", "local_folder"])
@pytest.mark.parametrize("environment", WITHOUT_A_HUB)
def test_an_hf_model_without_a_reachable_hub_is_unavailable(tmp_path, method, environment):
    answer = ask_the_hub(method, environment, tmp_path / "hf-home")

    assert answer["error"] == "ModelUnavailable"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("environment", WITHOUT_A_HUB)
def test_an_unavailable_hf_model_says_how_to_use_the_folder_instead(tmp_path, environment):
    message = ask_the_hub("inspect_model", environment, tmp_path / "hf-home")["message"]

    assert message.startswith("hf://org/name: the model hub cannot be reached")
    assert "save_pretrained" in message
    assert "upload the folder to S3" in message


# --- identities -------------------------------------------------------------------------------


def test_the_identity_of_a_file_changes_with_its_content(storage, tmp_path):
    seed = tmp_path / "ift.jsonl"
    seed.write_text('{"prompt": "a"}\n')
    before = storage.identity(str(seed))

    seed.write_text('{"prompt": "b"}\n')

    assert storage.identity(str(seed)) != before


def test_the_identity_of_an_unchanged_file_is_stable(storage, tmp_path):
    seed = tmp_path / "ift.jsonl"
    seed.write_text('{"prompt": "a"}\n')

    assert storage.identity(str(seed)) == storage.identity(str(seed))


def test_the_identity_of_a_committed_folder_is_the_hash_of_its_manifests_files(storage, tmp_path):
    folder = committed_model(storage, tmp_path / "model")

    manifest = storage.read_manifest(str(folder))

    assert storage.identity(str(folder)) == sha256_json(manifest["files"])


def test_the_identity_of_a_plain_folder_changes_when_a_file_is_rewritten(storage, tmp_path):
    folder = model_folder(tmp_path / "model")
    before = storage.identity(str(folder))

    (folder / "model.safetensors").write_text("other, longer weights")

    assert storage.identity(str(folder)) != before


def test_the_identity_of_nothing_is_refused_naming_the_uri(storage, tmp_path):
    with pytest.raises(ArtifactMissing, match="nowhere.jsonl: nothing there"):
        storage.identity(str(tmp_path / "nowhere.jsonl"))

