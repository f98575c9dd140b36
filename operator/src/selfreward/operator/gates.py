"""Judge-quality gates: is a judge stage's output worth training on? (pure)

A judge that cannot write a score, that scores every candidate alike, or that gives nearly every
judgement the same score yields preference pairs that are noise, and DPO on noise only wastes
a training round (the paper's loop is known for judges that collapse). After a judge stage succeeds, its totals (the
shard metrics added up) are compared with spec.judge.gates:

- parseFailureRate: judgements without a valid score of the model's own (a constrained score
  still counts as a failure: the model did not write it), over all judgements;
- tieRate: prompts whose best and worst candidates scored the same, over the prompts with at
  least two scored candidates;
- modalScoreShare: the share of the most common score among the scored judgements (1.0 when
  every judgement gives the same score).

The planner checks them from status whenever DPO of that iteration is next (also when it is to
run again), so a gate is never stored as a decision: relaxing a limit (or switching onViolation
to Warn) lets the run go on without judging again.
A gate with nothing to measure (no judgements) passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAIL = "Fail"
WARN = "Warn"


@dataclass(frozen=True)
class Gate:
    name: str  # the figure, as in status
    limit_field: str  # its limit in spec.judge.gates
    reason: str  # PascalCase, for the Failed condition
    what: str  # the figure in words, for messages


GATES = (
    Gate("parseFailureRate", "maxParseFailureRate", "JudgeParseFailures", "judgements without a score of the model's own"),
    Gate("tieRate", "maxTieRate", "JudgeTies", "prompts whose best and worst candidates tied"),
    Gate("modalScoreShare", "maxModalScoreShare", "JudgeScoreCollapse", "judgements giving the most common score"),
)


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float
    count: int
    total: int
    limit: float

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    def message(self, iteration: int) -> str:
        return (f"judge gate {self.gate.name} of iteration {iteration}: {self.value:.3f} ({self.count} of {self.total} "
                f"{self.gate.what}) is above spec.judge.gates.{self.gate.limit_field} {self.limit:g}")

    def as_status(self) -> dict[str, Any]:
        return {"name": self.gate.name, "value": round(self.value, 4), "limit": self.limit, "passed": self.passed}


def figures(metrics: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(count, total) of each gate's figure from a judge stage's summed metrics; a figure whose
    total is 0 (or whose counts are missing) is left out."""
    scores = {key: value for key, value in metrics.items() if key.startswith("score") and key[5:].isdigit()}
    found = {
        "parseFailureRate": (metrics.get("parseFailures", 0), metrics.get("judgements", 0)),
        "tieRate": (metrics.get("ties", 0), metrics.get("pairs", 0) + metrics.get("ties", 0) + metrics.get("gapTooSmall", 0)),
        "modalScoreShare": (max(scores.values(), default=0), sum(scores.values())),
    }
    return {name: (count, total) for name, (count, total) in found.items() if total}


def check(metrics: dict[str, Any], limits: dict[str, Any]) -> list[GateResult]:
    """Every measurable gate's result, in GATES order."""
    measured = figures(metrics)
    return [
        GateResult(gate, count / total, count, total, limits[gate.limit_field])
        for gate in GATES
        if gate.name in measured
        for count, total in [measured[gate.name]]
    ]


def blocking(metrics: dict[str, Any], limits: dict[str, Any]) -> list[GateResult]:
    """The failed gates that stop the run: none when onViolation is Warn."""
    if limits["onViolation"] != FAIL:
        return []
    return [result for result in check(metrics, limits) if not result.passed]
