"""The SelfRewardRun CRD against a real kube-apiserver: it installs, explains itself, applies its
defaults, refuses invalid specs with the field path, protects immutable fields, and has a status
subresource and printer columns.

The invalid-spec table is the one the local validator is tested with (tests/unit/test_spec.py),
so `selfreward run` and `kubectl apply` are held to the same answers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from selfreward.operator.spec import GROUP, PLURAL, VERSION, validate
from tests.builders import run_object, with_field
from tests.fixtures.cluster import wait_for
from tests.unit.test_spec import INVALID

pytestmark = pytest.mark.kube
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "selfrewardruns.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.apply(CRD)
    cluster.wait_for_crd(f"{PLURAL}.{GROUP}")
    return cluster


def create(cluster, namespace: str, obj: dict) -> dict:
    body = copy.deepcopy(obj)
    body["metadata"]["namespace"] = namespace
    return cluster.custom_objects().create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def rejection(cluster, namespace: str, obj: dict) -> str:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as refused:
        create(cluster, namespace, obj)
    assert refused.value.status in (400, 422), refused.value.body
    return json.loads(refused.value.body)["message"]


def patch(cluster, namespace: str, name: str, body: dict, subresource: str = ""):
    api = cluster.custom_objects()
    if subresource == "status":
        return api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)
    return api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)


def test_kubectl_explain_reads_the_descriptions(crd):
    explained = wait_for(lambda: crd.kubectl("explain", "selfrewardrun.spec.judge", check=False).stdout, 30, "explain")
    assert "LLM-as-a-Judge scoring" in explained
    assert "samples" in explained and "Judgements sampled per candidate" in explained


def test_short_name_and_category_resolve(crd):
    resources = crd.kubectl("api-resources", "--api-group", GROUP, "-o", "wide").stdout
    assert "srr" in resources and "selfreward" in resources


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_is_accepted_and_defaulted_like_the_local_validator(crd, namespace, example):
    obj = yaml.safe_load(example.read_text())
    created = create(crd, namespace, obj)
    assert created["spec"] == validate(obj)["spec"]


def test_server_applies_the_papers_defaults(crd, namespace):
    created = create(crd, namespace, run_object())
    spec = created["spec"]
    assert spec["iterations"] == 3
    assert (spec["generation"]["candidates"], spec["generation"]["temperature"], spec["generation"]["topP"]) == (4, 0.7, 0.9)
    assert spec["judge"]["samples"] == 3 and spec["judge"]["scoreRange"] == {"min": 0, "max": 5}
    assert spec["dpo"]["beta"] == 0.1 and spec["promptGeneration"]["fewShot"] == {"fromSeed": 6, "fromGenerated": 2}


SERVER_SIDE = [row for row in INVALID if row.values[1].startswith("spec")]


@pytest.mark.parametrize(("change", "path"), [row.values for row in SERVER_SIDE], ids=[row.id for row in SERVER_SIDE])
def test_an_invalid_spec_is_rejected_with_its_field_path(crd, namespace, change, path):
    message = rejection(crd, namespace, with_field(run_object(), *change) if change[1] is not None
                        else with_field(run_object(), change[0]))
    assert path in message, message


def test_the_invalid_table_is_large_enough():
    assert len(SERVER_SIDE) >= 15


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("spec.baseModel.uri", "s3://elsewhere/model", "baseModel.uri is immutable"),
        ("spec.storage.uri", "s3://elsewhere/runs", "storage.uri is immutable"),
        ("spec.iterations", 2, "iterations can be raised to continue a run, not lowered"),
    ],
    ids=["base-model", "storage", "lower-iterations"],
)
def test_fields_that_must_not_change_are_protected(crd, namespace, field, value, message):
    from kubernetes.client.exceptions import ApiException

    create(crd, namespace, run_object())
    body = with_field({}, field, value)
    with pytest.raises(ApiException) as refused:
        patch(crd, namespace, "demo", body)
    assert refused.value.status == 422
    assert message in json.loads(refused.value.body)["message"]


def test_iterations_can_be_raised_to_continue_a_run(crd, namespace):
    create(crd, namespace, run_object())
    patched = patch(crd, namespace, "demo", {"spec": {"iterations": 5}})
    assert patched["spec"]["iterations"] == 5


def test_status_is_a_subresource(crd, namespace):
    create(crd, namespace, run_object())
    ignored = patch(crd, namespace, "demo", {"status": {"phase": "Running"}})
    assert "status" not in ignored or ignored["status"].get("phase") != "Running"
    written = patch(crd, namespace, "demo", {"status": {"phase": "Running", "iteration": 2, "stage": "judge"}}, "status")
    assert written["status"]["phase"] == "Running"
    assert written["metadata"]["generation"] == 1  # a status write is not a spec change


def test_printer_columns_show_iteration_stage_phase_age(crd, namespace):
    create(crd, namespace, run_object())
    patch(crd, namespace, "demo", {"status": {"phase": "Running", "iteration": 2, "stage": "judge"}}, "status")
    table = crd.kubectl("get", "srr", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "ITERATION", "STAGE", "PHASE", "AGE"]
    assert table[1].split()[:4] == ["demo", "2", "judge", "Running"]


def test_the_executors_status_shape_round_trips_through_the_status_subresource(crd, namespace):
    from selfreward.operator import plan as planner
    from selfreward.operator import status as status_core
    from tests.builders import ROOT

    created = create(crd, namespace, run_object())
    spec = validate(run_object())["spec"]
    step = planner.plan(spec, {}, ROOT)
    status = status_core.record_start({}, step, ["demo-i01-sft-a1"], at="2026-01-01T00:00:00Z")
    status = status_core.record(status, step, {"ok": True, "shards": [{"index": 0, "skipped": False}],
                                               "metrics": {"trainLoss": 1.25, "steps": 3}}, at="2026-01-01T00:05:00Z")
    status = status_core.summarize(status, planner.plan(spec, status, ROOT), spec,
                                   created["metadata"]["generation"], at="2026-01-01T00:05:00Z")

    written = patch(crd, namespace, "demo", {"status": status}, "status")

    assert written["status"] == status
