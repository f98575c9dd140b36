"""The operator image's Dockerfile, checked without a container builder (none runs on this
machine yet): its build stage's COPY and RUN steps are replayed here, in a context made of
exactly what it copies, so the image installs from uv.lock what the operator needs and nothing
more; its final stage runs as a non-root user and starts the operator.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UV = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")


def instructions(dockerfile: Path) -> list[tuple[str, str, str]]:
    """(stage name, instruction, arguments) in order, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    stages, result = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append(rest.split(" AS ")[-1] if " AS " in rest else f"stage{len(stages)}")
        result.append((stages[-1] if stages else "", keyword.upper(), rest.strip()))
    return result


def test_the_operator_image_runs_the_operator_as_a_non_root_user():
    steps = instructions(REPO / "Dockerfile")
    final = [(keyword, rest) for stage, keyword, rest in steps if stage == steps[-1][0]]
    user = next(rest for keyword, rest in final if keyword == "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert ("ENTRYPOINT", '["selfreward-operator"]') in final
    assert not any(keyword == "RUN" for keyword, _ in final)  # nothing built or installed in the final stage


def test_the_operator_image_installs_from_the_lock_and_holds_no_training_stack(tmp_path):
    steps = [(keyword, rest) for stage, keyword, rest in instructions(REPO / "Dockerfile") if stage == "build"]
    context = tmp_path / "src"
    context.mkdir()
    for keyword, rest in steps:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, target = rest.split()
            for source in sources:
                origin, destination = REPO / source, context / target
                if origin.is_dir():
                    shutil.copytree(origin, destination, symlinks=True, dirs_exist_ok=True)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, destination if not target.endswith("/") else destination / origin.name)
    env_line = next(rest for keyword, rest in steps if keyword == "ENV")
    env = dict(re.findall(r"(\w+)=(\S+)", env_line))
    venv = tmp_path / "venv"
    env["UV_PROJECT_ENVIRONMENT"] = str(venv)
    install = next(rest for keyword, rest in steps if keyword == "RUN" and rest.startswith("uv "))
    assert "--frozen" in install  # exactly the locked versions
    subprocess.run([UV, *install.split()[1:]], cwd=context, env={**os.environ, **env}, check=True, capture_output=True)

    operator = subprocess.run([str(venv / "bin" / "selfreward-operator"), "--help"], capture_output=True, text=True)
    assert operator.returncode == 0 and "--namespace" in operator.stdout
    probe = "import importlib.util as u; print([m for m in ('torch', 'boto3', 'vllm', 'selfreward.trainer') if u.find_spec(m)])"
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert installed.stdout.strip() == "[]"
