"""Start and stop the test control plane on 127.0.0.1 (stdlib only).

    python3 -m testbed.testbed up      # build if needed, start, print two `export` lines
    python3 -m testbed.testbed down    # stop everything started by `up` (pid files)
    python3 -m testbed.testbed status

State dir: $SELFREWARD_TESTBED_STATE (default /tmp/selfreward-testbed).
Binary cache: $SELFREWARD_TESTBED_CACHE (default $HOME/.cache/selfreward-testbed), filled by
testbed/build.sh.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.proc import LOOPBACK, free_port, http_ok, spawn, stop_pidfile, wait_until

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

# Fixed test credentials of the MinIO server (it only ever listens on 127.0.0.1).
S3_ACCESS_KEY = "selfreward-test"
S3_SECRET_KEY = "selfreward-test-secret"
S3_REGION = "us-east-1"


def default_state_dir() -> Path:
    return Path(os.environ.get("SELFREWARD_TESTBED_STATE", "/tmp/selfreward-testbed"))


# --------------------------------------------------------------------------- binaries

def component_dirs() -> dict[str, Path]:
    """Cache dir of every component, whether built or not."""
    out = subprocess.run(["bash", str(BUILD_SH), "--print-dirs"], check=True,
                         capture_output=True, text=True).stdout
    return {name: Path(d) for name, d in (line.split(" ", 1) for line in out.splitlines())}


def ensure_built(*components: str) -> dict[str, Path]:
    """Build the named components (all when none) unless cached; return every component's dir."""
    dirs = component_dirs()
    wanted = components or tuple(dirs)
    if not all((dirs[c] / ".complete").exists() for c in wanted):
        # Build output goes to stderr so `up`'s stdout stays two export lines.
        subprocess.run(["bash", str(BUILD_SH), *wanted], check=True, stdout=sys.stderr)
    return dirs


# --------------------------------------------------------------------------- MinIO

@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid_file: Path
    log_file: Path

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3 and the AWS CLI at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def stop(self) -> None:
        stop_pidfile(self.pid_file)


def start_minio(state_dir: Path, die_with_parent: bool = False, timeout: float = 60.0) -> S3Server:
    """Start MinIO on a free 127.0.0.1 port with data under <state_dir>/minio; wait until ready."""
    minio = ensure_built("minio")["minio"] / "minio"
    data_dir = state_dir / "minio"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir, pid_dir = state_dir / "logs", state_dir / "pids"
    for attempt in range(3):  # the free port can be taken between probe and bind: retry
        port, console_port = free_port(), free_port()
        endpoint = f"http://{LOOPBACK}:{port}"
        proc = spawn("minio", [str(minio), "server", "--quiet",
                               "--address", f"{LOOPBACK}:{port}",
                               "--console-address", f"{LOOPBACK}:{console_port}",
                               str(data_dir)],
                     log_dir, pid_dir, die_with_parent=die_with_parent, env={
                         "MINIO_ROOT_USER": S3_ACCESS_KEY,
                         "MINIO_ROOT_PASSWORD": S3_SECRET_KEY,
                         "MINIO_SITE_REGION": S3_REGION,
                         "MINIO_BROWSER": "off",
                         "MINIO_UPDATE": "off",
                         "MINIO_CALLHOME_ENABLE": "off",
                     })
        server = S3Server(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, data_dir,
                          pid_dir / "minio.pid", log_dir / "minio.log")
        try:
            wait_until(lambda: http_ok(f"{endpoint}/minio/health/ready"), timeout,
                       "minio", proc=proc, log=server.log_file)
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- CLI

def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "help"
    if cmd == "build":
        ensure_built(*argv[2:])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
