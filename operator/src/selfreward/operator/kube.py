"""The only module that calls the Kubernetes API (the kubernetes client, synchronous).

Objects go in and come out as plain dicts, the shape the pure modules read and build. A create
answered 409 means the child is already there (deterministic names make creation idempotent);
a status write answered 409 means the run changed since it was read: the caller reads it again.
The operator reads runs, children and pods and writes status, children and Events; it never
reads a Secret.
"""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import datetime, timezone
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from selfreward.operator.children import RUN_LABEL
from selfreward.operator.events import Event
from selfreward.operator.spec import GROUP, KIND, PLURAL, VERSION

TRAINING_GROUP, TRAINING_VERSION, TRAINING_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
COMPONENT = "selfreward-operator"


class Conflict(Exception):
    """The object changed since it was read."""


class Invalid(Exception):
    """The API server refused an object the operator built (422): the run's spec cannot be run as it is."""


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In a pod: its ServiceAccount. Elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config(config_file=kubeconfig)


def _json(response) -> Any:
    return json.loads(response.data)


class Cluster:
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.instance = socket.gethostname()

    # --- runs ---------------------------------------------------------------------------------
    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def replace_status(self, run: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write the whole status, guarded by the resourceVersion the run was read at."""
        meta = run["metadata"]
        body = {"apiVersion": run["apiVersion"], "kind": run["kind"], "spec": run["spec"], "status": status,
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "resourceVersion": meta["resourceVersion"]}}
        try:
            return self.custom.replace_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
        except ApiException as error:
            if error.status in (404, 409):
                raise Conflict(f"run {meta['namespace']}/{meta['name']} changed since it was read") from error
            raise

    # --- children -----------------------------------------------------------------------------
    def list_children(self, namespace: str, run: str) -> list[dict[str, Any]]:
        selector = f"{RUN_LABEL}={run}"
        jobs = _json(self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False))["items"]
        for job in jobs:
            job.update(apiVersion="batch/v1", kind="Job")
        try:
            trainings = self.custom.list_namespaced_custom_object(
                TRAINING_GROUP, TRAINING_VERSION, namespace, TRAINING_PLURAL, label_selector=selector)["items"]
        except ApiException as error:
            if error.status != 404:  # the training operator is not installed: no PyTorchJobs exist
                raise
            trainings = []
        return jobs + trainings

    def create_child(self, child: dict[str, Any]) -> None:
        namespace = child["metadata"]["namespace"]
        try:
            if child["kind"] == "Job":
                self.batch.create_namespaced_job(namespace, child, _preload_content=False)
            else:
                self.custom.create_namespaced_custom_object(TRAINING_GROUP, TRAINING_VERSION, namespace, TRAINING_PLURAL, child)
        except ApiException as error:
            if error.status == 409:
                return  # already there: created before a restart, or by the reconcile before this one
            if error.status in (400, 404, 422):
                raise Invalid(_api_message(error)) from error
            raise

    def set_suspended(self, child: dict[str, Any], suspended: bool) -> None:
        meta = child["metadata"]
        if child["kind"] == "Job":
            self.batch.patch_namespaced_job(meta["name"], meta["namespace"], {"spec": {"suspend": suspended}},
                                            _preload_content=False)
        else:
            self.custom.patch_namespaced_custom_object(TRAINING_GROUP, TRAINING_VERSION, meta["namespace"], TRAINING_PLURAL,
                                                       meta["name"], {"spec": {"runPolicy": {"suspend": suspended}}})

    def pods_of(self, child: dict[str, Any]) -> list[dict[str, Any]]:
        meta = child["metadata"]
        label = "batch.kubernetes.io/job-name" if child["kind"] == "Job" else "training.kubeflow.org/job-name"
        response = self.core.list_namespaced_pod(meta["namespace"], label_selector=f"{label}={meta['name']}",
                                                 _preload_content=False)
        return _json(response)["items"]

    # --- events -------------------------------------------------------------------------------
    def post_event(self, run: dict[str, Any], event: Event) -> None:
        """A core/v1 Event on the run, named after the transition it reports (409: already posted)."""
        meta = run["metadata"]
        digest = hashlib.sha256(f"{meta['uid']}/{event.key}".encode()).hexdigest()[:16]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": event.type, "reason": event.reason, "message": event.message,
            "source": {"component": COMPONENT, "host": self.instance},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)
        except ApiException as error:
            if error.status != 409:
                raise


def _api_message(error: ApiException) -> str:
    try:
        return json.loads(error.body).get("message", str(error))
    except (TypeError, ValueError):
        return f"{error.status} {error.reason}"
