"""`selfreward lineage`: the chain M_t -> prompts -> candidates -> judgements -> pairs -> M_(t+1),
read back from the manifests in the run's storage.

Every manifest records the inputs its stage was made from, each with the content identity it
had then. Comparing that with what each input holds now shows whether the chain still holds:
an input rewritten since (a seed file edited, a stage redone) is flagged, and the stages made
from it are the ones the next `selfreward run` makes again.
"""

from __future__ import annotations

from typing import Any

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator.report import TRANSIENT_OUTPUTS


def collect(storage, spec: dict[str, Any], root: str) -> list[dict[str, Any]]:
    """One entry per committed stage output, in run order, with its inputs and whether they still match."""
    identities: dict[str, str | None] = {}

    def current(uri: str) -> str | None:
        if uri not in identities:
            try:
                identities[uri] = storage.identity(uri)
            except FileNotFoundError:
                identities[uri] = None
        return identities[uri]

    def current_input(item: dict[str, Any]) -> str | None:
        """What the input holds now, by the rule it was recorded with (a sharded input: by the
        fingerprints its shards were made with)."""
        if "shards" not in item:
            return current(item["uri"])
        from selfreward.trainer.stagekit import sharded_identity

        return sharded_identity(storage, item["uri"], item["shards"], list(range(item["shards"])))

    entries = []
    for iteration in range(1, spec["iterations"] + 1):
        for stage in planner.stages_of(iteration, spec):
            for name, uri in layout.stage_outputs(root, iteration, stage).items():
                if name in TRANSIENT_OUTPUTS:
                    continue
                manifests = _manifests(storage, uri)
                if not manifests:
                    continue
                made_from = manifests[0].get("lineage") or {}
                inputs = []
                for input_name, value in sorted((made_from.get("inputs") or {}).items()):
                    for item in value if isinstance(value, list) else [value]:
                        now = current_input(item)
                        inputs.append({"name": input_name, "uri": item["uri"], "identity": item["identity"],
                                       "current": "matches" if now == item["identity"] else ("missing" if now is None else "changed")})
                entries.append({
                    "iteration": iteration,
                    "stage": stage,
                    "output": name,
                    "uri": uri,
                    "identity": current(uri),
                    "shards": len(manifests) if stage in planner.SHARDED_STAGES else None,
                    "fingerprints": sorted({m.get("fingerprint", "") for m in manifests}),
                    "committedAt": max(m.get("committedAt", "") for m in manifests),
                    "program": made_from.get("program"),
                    "inputs": inputs,
                })
    return entries


def _manifests(storage, uri: str) -> list[dict[str, Any]]:
    manifest = storage.read_manifest(uri)
    if manifest is not None:
        return [manifest]
    folders = sorted({found.rsplit("/", 1)[0] for found in storage.list(uri) if found.endswith("/_manifest.json")})
    shards = [m for m in (storage.read_manifest(folder) for folder in folders) if m is not None]
    if not shards:
        return []
    newest = max(shards, key=lambda m: m.get("committedAt", ""))  # shards of an older shard count may remain
    return [m for m in shards if m.get("fingerprint") == newest.get("fingerprint")]
