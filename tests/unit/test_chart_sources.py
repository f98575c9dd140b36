"""The Helm chart's derived files match their sources, and its values match their schema."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from jsonschema import Draft7Validator

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "selfreward"


def test_the_charts_crd_copy_and_values_table_are_generated_from_their_sources():
    checked = subprocess.run([sys.executable, "charts/generate.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_charts_crd_is_the_source_crd_kept_on_uninstall():
    source = yaml.safe_load((REPO / "crds" / "selfrewardruns.yaml").read_text())
    copy = yaml.safe_load((CHART / "files" / "selfrewardruns.yaml").read_text())
    assert copy["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert copy == source


def schema_errors(values):
    schema = json.loads((CHART / "values.schema.json").read_text())
    return [error.message for error in Draft7Validator(schema).iter_errors(values)]


def test_the_default_values_satisfy_the_schema():
    assert schema_errors(yaml.safe_load((CHART / "values.yaml").read_text())) == []


def test_the_schema_refuses_unknown_and_mistyped_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert any("colour" in message for message in schema_errors({**values, "colour": "blue"}))
    assert schema_errors({**values, "logLevel": "chatty"})
    assert schema_errors({**values, "workers": {**values["workers"], "placementDefaults": {"inference": {"replicas": 4}}}})


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    sys.path.insert(0, str(REPO / "charts"))
    from generate import documented_values

    documented = {key for key, _ in documented_values(text)}

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in documented:
                yield from leaves(value, path + ".")
            else:
                yield path

    assert sorted(set(leaves(yaml.safe_load(text))) - documented) == []


def test_placement_defaults_are_held_to_the_crds_placement_schema():
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def with_training(defaults):
        return {**values, "workers": {**values["workers"], "placementDefaults": {"training": defaults}}}

    assert schema_errors(with_training({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                        "resources": {"limits": {"nvidia.com/gpu": 8}}})) == []
    assert schema_errors(with_training({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Sometimes"}]}))
    assert schema_errors(with_training({"queueName": "q" * 64}))
