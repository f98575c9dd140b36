"""Model loading from S3: `Storage.local_folder` (what every stage does with an s3:// model)
against s5cmd, on a model folder of several GB on MinIO over loopback.

    .venv/bin/python bench/s3_model_loading.py [--shards 3 --shard-mib 1024 --repeats 3]

MinIO and s5cmd are built from their Go modules (cached outside the repository, keyed by
version, like the testbed's binaries). The folder is committed by `upload_folder` + `commit`
(a manifest with every file's sha256 and ETag), as stages commit models. Each download goes to a
fresh folder, from a fresh process on each side (a stage is a fresh process that loads its model
once; s5cmd starts afresh too); the figure is the median of the repeats. The project's side is
timed inside its process from the call of `local_folder` (the interpreter's start and imports,
which a stage pays once whatever it downloads, are reported apart), and includes what it does
beyond copying (listing, reading the manifest and the weight index, checking every file against
the manifest). s5cmd runs with its defaults and with the project's concurrency (16 parts in
flight, 32 MiB parts); the faster is the peer's figure. CPU seconds are recorded for each side
and for MinIO: on a machine of few cores the three share them, and CPU is what a side saves.
What hashing every file would add (the check used where an ETag does not prove a file) is
measured apart.

Writes bench/results/s3-model-loading.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "s3-model-loading.json"
S5CMD_VERSION = "v2.3.0"
BUCKET = "bench"


def s5cmd_binary() -> Path:
    """s5cmd built from its Go module once, cached by version beside the testbed's binaries."""
    cache = Path(os.environ.get("SELFREWARD_TESTBED_CACHE", Path.home() / ".cache" / "selfreward-testbed"))
    folder = cache / f"s5cmd-{S5CMD_VERSION}"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"  # as testbed/build.sh finds it
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        # `go install module@version` also reads the module's version list, which a proxy may refuse;
        # downloading the exact version and building in its folder does not.
        listing = subprocess.run([go, "mod", "download", "-json", f"github.com/peak/s5cmd/v2@{S5CMD_VERSION}"],
                                 check=True, capture_output=True, text=True, env=env)
        source = json.loads(listing.stdout)["Dir"]
        subprocess.run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(folder / "s5cmd"), "."],
                       check=True, cwd=source, env=env)
        (folder / ".complete").touch()
    return folder / "s5cmd"


def make_model(folder: Path, shards: int, shard_mib: int) -> int:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (folder / "tokenizer.json").write_text("{}")
    index = {"metadata": {}, "weight_map": {}}
    for number in range(1, shards + 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        with open(folder / name, "wb") as out:
            for _ in range(shard_mib):
                out.write(os.urandom(2**20))
        index["weight_map"][f"layer.{number}.weight"] = name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sum(p.stat().st_size for p in folder.iterdir())


def timed(action) -> float:
    os.sync()  # the previous side's writes reach the disk before this side's clock starts
    started = time.monotonic()
    action()
    return time.monotonic() - started


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def download_once(uri: str, cache: str) -> None:
    """The project's side, in the process the bench starts for it: what a stage does with an
    s3:// model, timed from the call; prints {"seconds": ...}."""
    from selfreward.trainer.storage import CACHE_ENV, Storage, StorageOptions

    os.environ[CACHE_ENV] = cache
    storage = Storage(StorageOptions(endpoint=os.environ["AWS_ENDPOINT_URL_S3"], region=os.environ["AWS_REGION"]))
    storage.s3  # a stage has its client before it asks for the model
    print(json.dumps({"seconds": timed(lambda: storage.local_folder(uri))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--shard-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--download-once", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.download_once:
        return download_once(args.download_once, args.cache)
    from testbed.testbed import start_minio
    from selfreward.trainer import storage as storage_module
    from selfreward.trainer.storage import Storage, StorageOptions, sha256_files

    s5cmd = s5cmd_binary()
    with tempfile.TemporaryDirectory(prefix="s3bench-") as scratch:
        scratch = Path(scratch)
        server = start_minio(scratch / "state", die_with_parent=True)
        try:
            server.create_bucket(BUCKET)
            os.environ.update(server.env())
            storage = Storage(StorageOptions(endpoint=server.endpoint, region=server.region))
            size = make_model(scratch / "model", args.shards, args.shard_mib)
            uri = f"s3://{BUCKET}/models/m"
            upload = timed(lambda: storage.commit(uri, storage.upload_folder(scratch / "model", uri)))
            shutil.rmtree(scratch / "model")

            minio = int((scratch / "state" / "pids" / "minio.pid").read_text())
            sides = ("ours", "s5cmdDefaults", "s5cmdMatched")
            cpu = {"client": {side: [] for side in sides}, "minio": {side: [] for side in sides}}

            def with_cpu(side: str, who: int, action):
                """`action()`'s result, its client's CPU seconds and MinIO's recorded for `side`."""
                os.sync()  # the previous side's writes reach the disk before this side starts
                client, server_side = cpu_seconds(who), process_cpu_seconds(minio)
                result = action()
                cpu["client"][side].append(round(cpu_seconds(who) - client, 2))
                cpu["minio"][side].append(round(process_cpu_seconds(minio) - server_side, 2))
                return result

            def ours(n: int) -> float:
                cache = scratch / f"cache-{n}"
                started = time.monotonic()
                child = with_cpu("ours", resource.RUSAGE_CHILDREN, lambda: subprocess.run(
                    [sys.executable, __file__, "--download-once", uri, "--cache", str(cache)],
                    check=True, capture_output=True, text=True, env={**os.environ, **server.env()}))
                process_seconds.append(time.monotonic() - started)
                shutil.rmtree(cache)
                return json.loads(child.stdout)["seconds"]

            def peer(n: int, side: str, flags: dict[str, list[str]]) -> float:
                target = scratch / f"s5cmd-{n}"
                seconds = with_cpu(side, resource.RUSAGE_CHILDREN, lambda: timed(lambda: subprocess.run(
                    [str(s5cmd), "--endpoint-url", server.endpoint, *flags["global"], "cp", *flags["cp"],
                     f"{uri}/*", f"{target}/"],
                    check=True, capture_output=True)))
                shutil.rmtree(target)
                return seconds

            def verify_only() -> float:
                local = Storage(storage.options).download_committed(uri, scratch / "verify")
                paths = [p for p in local.iterdir() if p.is_file()]
                seconds = timed(lambda: sha256_files(paths))
                shutil.rmtree(local)
                return seconds

            concurrency = str(storage_module.TRANSFER_CONCURRENCY)
            part_mib = str(storage_module.TRANSFER_PART_BYTES // 2**20)
            matched = {"global": ["--numworkers", concurrency], "cp": ["--concurrency", concurrency, "--part-size", part_mib]}
            defaults = {"global": [], "cp": []}
            runs = {side: [] for side in sides}
            process_seconds: list[float] = []
            for n in range(args.repeats):  # interleaved, so drift in the machine hits every side alike
                for side, run in (("ours", lambda: ours(n)), ("s5cmdDefaults", lambda: peer(n, "s5cmdDefaults", defaults)),
                                  ("s5cmdMatched", lambda: peer(n, "s5cmdMatched", matched))):
                    runs[side].append(run())
                    print(f"{side} run {n}: {runs[side][-1]:.2f} s", file=sys.stderr, flush=True)
            medians = {name: statistics.median(values) for name, values in runs.items()}
            peer_best = min(medians["s5cmdDefaults"], medians["s5cmdMatched"])
            result = {
                "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, MinIO on loopback",
                "folderBytes": size, "files": args.shards + 3, "uploadSeconds": round(upload, 2),
                "seconds": {name: [round(v, 2) for v in values] for name, values in runs.items()},
                "median": {name: round(v, 2) for name, v in medians.items()},
                "MiBPerSecond": {name: round(size / 2**20 / v, 1) for name, v in medians.items()},
                "cpuSeconds": cpu,
                "medianCpuSeconds": {who: {side: statistics.median(v) for side, v in by.items()} for who, by in cpu.items()},
                "sha256AllFilesSeconds": round(verify_only(), 2),
                "oursProcessSecondsMedian": round(statistics.median(process_seconds), 2),
                "oursVsS5cmd": round(peer_best / medians["ours"], 3),
                "s5cmd": {"version": S5CMD_VERSION, "defaults": defaults, "matched": matched},
            }
        finally:
            server.stop()
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
