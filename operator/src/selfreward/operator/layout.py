"""Where each artifact of a run lives: `<storage.uri>/<namespace>/<run>/iter-<NN>/<folder>/`."""

from __future__ import annotations

import hashlib

STAGE_OUTPUTS: dict[str, dict[str, str]] = {
    "sft": {"model": "model", "checkpoints": "checkpoints"},
    "instruct": {"prompts": "prompts"},
    "generate": {"candidates": "candidates"},
    "judge": {"judgements": "judgements", "pairs": "pairs"},
    "dpo": {"model": "model", "checkpoints": "checkpoints"},
    "evaluate": {"evaluation": "evaluation"},
    "compare": {"comparison": "comparison"},
}


def run_root(storage_uri: str, namespace: str, run: str) -> str:
    return f"{storage_uri.rstrip('/')}/{namespace}/{run}"


def iteration_folder(root: str, iteration: int, folder: str) -> str:
    return f"{root}/iter-{iteration:02d}/{folder}"


def stage_outputs(root: str, iteration: int, stage: str) -> dict[str, str]:
    return {name: iteration_folder(root, iteration, folder) for name, folder in STAGE_OUTPUTS[stage].items()}


def model_uri(root: str, base_model: str, iteration: int) -> str:
    """M_t: the base model for t = 0, else the model iteration t trained."""
    return base_model if iteration == 0 else iteration_folder(root, iteration, "model")


NAME_LIMIT = 63
# The training operator names a PyTorchJob's pods and Services `<job>-worker-<i>`; a Service name
# is a DNS label (63 characters), so a training child leaves room for "-worker-1023".
TRAINING_NAME_LIMIT = NAME_LIMIT - len("-worker-1023")


def child_name(run: str, iteration: int, stage: str, attempt: int) -> str:
    """`<run>-i<NN>-<stage>-a<N>`: at most 63 characters, 51 for a training stage.

    A run name too long to fit is cut and given a hash of the whole name, so two long names
    that share a prefix still get different children.
    """
    limit = TRAINING_NAME_LIMIT if stage in ("sft", "dpo") else NAME_LIMIT
    suffix = f"-i{iteration:02d}-{stage}-a{attempt}"
    if len(run) + len(suffix) <= limit:
        return run + suffix
    digest = hashlib.sha256(run.encode()).hexdigest()[:8]
    return run[: limit - len(suffix) - 9].rstrip("-.") + "-" + digest + suffix
