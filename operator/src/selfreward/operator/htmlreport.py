"""`selfreward report run.yaml --html DIR`: a run's iterations as plots and readable examples.

Reads the run's status (its metrics per stage) and the judge and compare artifacts it committed
(through the trainer's storage module), and writes into DIR:
- series.json: every plotted series, by name (what the plots show, as numbers);
- one PNG per plot: chosen and rejected score distributions per iteration, judge parse-failure
  and tie rates, answer length, reward-model metrics, head-to-head outcomes;
- index.html: the per-iteration table, the plots, and examples of what the loop made: prompts,
  candidates with their judgements, the pair kept, and head-to-head verdicts.
`series` is pure; `gather` reads storage; `write` renders.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfreward.operator import gates
from selfreward.operator.report import COLUMNS, iteration_rows, metric

EXAMPLES_PER_ITERATION = 3
PLOTS = ("scores", "judge", "length", "reward", "headtohead")


@dataclass
class Artifacts:
    """What the report reads besides status: per iteration, judged prompts and head-to-head rows."""

    judged: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    compared: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def gather(storage, status: dict[str, Any]) -> Artifacts:
    """The committed judgement and verdict rows of every iteration whose stage succeeded."""
    from selfreward.trainer.compare import VERDICTS_FILE
    from selfreward.trainer.judge import JUDGEMENTS_FILE
    from selfreward.trainer.stagekit import read_sharded

    found = Artifacts()
    for entry in status.get("iterations", []):
        for item in entry.get("stages", []):
            if item.get("state") != "Succeeded":
                continue
            if item["name"] == "judge":
                found.judged[entry["iteration"]] = read_sharded(
                    storage, item["outputs"]["judgements"], JUDGEMENTS_FILE, item.get("shardCount", 1))
            elif item["name"] == "compare":
                found.compared[entry["iteration"]] = storage.read_committed_jsonl(item["outputs"]["comparison"], VERDICTS_FILE)
    return found


def _kept_scores(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean scores of the chosen (highest) and rejected (lowest) candidate of each kept pair."""
    chosen, rejected = [], []
    for row in rows:
        if row.get("pair") != "kept":
            continue
        means = [c["mean"] for c in row["candidates"] if c["mean"] is not None]
        chosen.append(max(means))
        rejected.append(min(means))
    return chosen, rejected


def _rate(entry: dict[str, Any], stage: str, count: str, total: str) -> float | None:
    numerator, denominator = metric(entry, stage, count), metric(entry, stage, total)
    return round(numerator / denominator, 4) if numerator is not None and denominator else None


def series(status: dict[str, Any], artifacts: Artifacts) -> dict[str, Any]:
    """Every plotted series: per iteration, in iteration order (None where not measured)."""
    entries = sorted(status.get("iterations", []), key=lambda e: e["iteration"])
    iterations = [e["iteration"] for e in entries]
    by_metric = lambda stage, name: [metric(e, stage, name) for e in entries]  # noqa: E731
    judged = {t: _kept_scores(rows) for t, rows in artifacts.judged.items()}
    tie_rates = []
    for entry in entries:
        judge = next((s for s in entry.get("stages", []) if s["name"] == "judge"), None)
        shown = {g["name"]: g["value"] for g in (judge or {}).get("gates", [])}
        tie_rates.append(shown.get("tieRate", _tie_rate(judge)))
    return {
        "iterations": iterations,
        "chosenScores": {str(t): judged[t][0] for t in sorted(judged)},
        "rejectedScores": {str(t): judged[t][1] for t in sorted(judged)},
        "parseFailureRate": [_rate(e, "judge", "parseFailures", "judgements") for e in entries],
        "judgeTieRate": tie_rates,
        "meanAnswerChars": by_metric("evaluate", "meanResponseChars"),
        "meanCandidateChars": by_metric("generate", "meanCandidateChars"),
        "pairwiseAccuracy": by_metric("evaluate", "pairwiseAccuracy"),
        "fiveBest": by_metric("evaluate", "fiveBest"),
        "exactMatch": by_metric("evaluate", "exactMatch"),
        "spearman": by_metric("evaluate", "spearman"),
        "kendallTau": by_metric("evaluate", "kendallTau"),
        "winRate": by_metric("compare", "winRate"),
        "tieRate": by_metric("compare", "tieRate"),
        "lossRate": by_metric("compare", "lossRate"),
    }


def _tie_rate(judge: dict[str, Any] | None) -> float | None:
    if judge is None:
        return None
    measured = gates.figures(judge.get("metrics", {})).get("tieRate")
    return round(measured[0] / measured[1], 4) if measured else None


def _plot(name: str, data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4))
    x = data["iterations"]
    if name == "scores":
        labels = sorted(data["chosenScores"], key=int)
        for offset, (key, colour) in enumerate((("chosenScores", "tab:green"), ("rejectedScores", "tab:red"))):
            shown = [(i, data[key][t]) for i, t in enumerate(labels) if data[key][t]]  # no pairs, no violin
            if shown:
                positions = [i + (offset - 0.5) * 0.4 for i, _ in shown]
                parts = axes.violinplot([v for _, v in shown], positions=positions, widths=0.35, showmeans=True)
                for body in parts["bodies"]:
                    body.set_facecolor(colour)
                for lines in ("cbars", "cmins", "cmaxes", "cmeans"):
                    parts[lines].set_color(colour)
            axes.plot([], [], color=colour, label=key.replace("Scores", ""))
        axes.set_xticks(range(len(labels)), [f"iteration {t}" for t in labels])
        axes.set_ylabel("mean judge score of the pair's response")
        axes.set_title("Scores of chosen and rejected responses")
    elif name == "headtohead":
        bottom = [0.0] * len(x)
        for key, colour in (("winRate", "tab:green"), ("tieRate", "tab:gray"), ("lossRate", "tab:red")):
            values = [v or 0.0 for v in data[key]]
            axes.bar(x, values, bottom=bottom, color=colour, label=key.replace("Rate", ""))
            bottom = [b + v for b, v in zip(bottom, values)]
        axes.set_ylabel("share of the judged held-out prompts")
        axes.set_title("M_t against M_(t-1), head to head")
    else:
        keys = {"judge": ("parseFailureRate", "judgeTieRate"), "length": ("meanAnswerChars", "meanCandidateChars"),
                "reward": ("pairwiseAccuracy", "fiveBest", "exactMatch", "spearman", "kendallTau")}[name]
        for key in keys:
            points = [(t, v) for t, v in zip(x, data[key]) if v is not None]
            if points:
                axes.plot(*zip(*points), marker="o", label=key)
        axes.set_title({"judge": "Judge: parse failures and ties", "length": "Response length (characters)",
                        "reward": "Reward-model metrics on the held-out set"}[name])
    axes.set_xlabel("iteration" if name != "scores" else "")
    if name != "scores":
        axes.set_xticks(x)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _examples(artifacts: Artifacts) -> str:
    parts = []
    for iteration, rows in sorted(artifacts.judged.items()):
        parts.append(f"<h3>Iteration {iteration}: prompts, candidates and judgements</h3>")
        for row in rows[:EXAMPLES_PER_ITERATION]:
            parts.append(f"<div class='prompt'><p><b>Prompt:</b> {html.escape(row['prompt'])}</p><ol>")
            for candidate in row["candidates"]:
                first = candidate["judgements"][0] if candidate["judgements"] else ""
                parts.append(f"<li><pre>{html.escape(candidate['text'])}</pre><p>scores {html.escape(str(candidate['scores']))} "
                             f"(mean {html.escape(str(candidate['mean']))})</p><details><summary>first judgement</summary>"
                             f"<pre>{html.escape(first)}</pre></details></li>")
            parts.append(f"</ol><p>pair: {html.escape(str(row['pair']))}</p></div>")
    for iteration, rows in sorted(artifacts.compared.items()):
        parts.append(f"<h3>Iteration {iteration}: head to head (M{iteration} against M{iteration - 1})</h3>")
        for row in rows[:EXAMPLES_PER_ITERATION]:
            parts.append(f"<div class='prompt'><p><b>Prompt:</b> {html.escape(row['prompt'])}</p>"
                         f"<p><b>M{iteration}:</b></p><pre>{html.escape(row['new'])}</pre>"
                         f"<p><b>M{iteration - 1}:</b></p><pre>{html.escape(row['old'])}</pre>"
                         f"<p>verdicts {html.escape(str(row['verdicts']))}: <b>{html.escape(str(row['outcome']))}</b></p></div>")
    return "\n".join(parts)


def write(out: Path, status: dict[str, Any], artifacts: Artifacts, title: str) -> dict[str, Any]:
    """Write series.json, the plots and index.html into `out`; returns the series."""
    out.mkdir(parents=True, exist_ok=True)
    data = series(status, artifacts)
    (out / "series.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for name in PLOTS:
        _plot(name, data, out / f"{name}.png")
    rows = iteration_rows(status)
    head = "".join(f"<th>iter {html.escape(r['iteration'])}</th>" for r in rows)
    body = "".join(f"<tr><td>{html.escape(h)}</td>{''.join(f'<td>{html.escape(r[h])}</td>' for r in rows)}</tr>"
                   for h, _, _ in COLUMNS)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} td,th{{padding:2px 8px;text-align:right}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:4px}} .prompt{{border-top:1px solid #ccc;margin:8px 0}}</style>
</head><body><h1>{html.escape(title)}</h1><p>phase: {html.escape(str(status.get('phase', 'Pending')))}</p>
<table><tr><th>metric</th>{head}</tr>{body}</table>
{''.join(f'<img src="{name}.png" alt="{name}">' for name in PLOTS)}
<h2>Examples</h2>
{_examples(artifacts)}
</body></html>
"""
    (out / "index.html").write_text(page)
    return data
