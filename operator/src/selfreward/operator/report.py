"""The per-iteration summary of a run, from its status alone (pure; the CLI renders it)."""

from __future__ import annotations

from typing import Any

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (heading, stage, metric)
    ("prompts kept", "instruct", "promptsKept"),
    ("candidates", "generate", "candidates"),
    ("mean chars", "generate", "meanCandidateChars"),
    ("cut off", "generate", "truncatedCandidates"),
    ("parse failures", "judge", "parseFailures"),
    ("constrained", "judge", "constrainedScores"),
    ("judge cut off", "judge", "truncatedJudgements"),
    ("ties dropped", "judge", "ties"),
    ("pairs", "judge", "pairs"),
    ("chosen score", "judge", "meanChosenScore"),
    ("rejected score", "judge", "meanRejectedScore"),
    ("train loss", "sft", "trainLoss"),
    ("DPO loss", "dpo", "trainLoss"),
    ("pairwise acc", "evaluate", "pairwiseAccuracy"),
    ("5-best", "evaluate", "fiveBest"),
    ("exact match", "evaluate", "exactMatch"),
    ("Spearman", "evaluate", "spearman"),
    ("Kendall tau", "evaluate", "kendallTau"),
    ("answer chars", "evaluate", "meanResponseChars"),
    ("vs previous: win", "compare", "winRate"),
    ("vs previous: loss", "compare", "lossRate"),
    ("vs previous: tie", "compare", "tieRate"),
)
PERCENT = {"pairwiseAccuracy", "fiveBest", "exactMatch", "winRate", "lossRate", "tieRate"}


def metric(entry: dict[str, Any], stage: str, name: str) -> Any:
    for item in entry.get("stages", []):
        if item["name"] == stage:
            return item.get("metrics", {}).get(name)
    return None


def format_value(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in PERCENT:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def iteration_rows(status: dict[str, Any]) -> list[dict[str, str]]:
    """One row per iteration: the model, then each column's formatted value."""
    rows = []
    for entry in status.get("iterations", []):
        row = {"iteration": f"{entry['iteration']} (M{entry['iteration']})", "phase": entry.get("phase", "")}
        for heading, stage, name in COLUMNS:
            row[heading] = format_value(name, metric(entry, stage, name))
        rows.append(row)
    return rows


# Outputs that a finished stage no longer has: training checkpoints go once the model is committed.
TRANSIENT_OUTPUTS = ("checkpoints",)


def artifact_rows(status: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(iteration, stage, output URI) for every committed stage output."""
    rows = []
    for entry in status.get("iterations", []):
        for item in entry.get("stages", []):
            if item.get("state") == "Succeeded":
                for name, uri in sorted(item.get("outputs", {}).items()):
                    if name not in TRANSIENT_OUTPUTS:
                        rows.append((str(entry["iteration"]), f"{item['name']}/{name}", uri))
    return rows
