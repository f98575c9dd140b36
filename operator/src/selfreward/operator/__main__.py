"""`python -m selfreward.operator` / `selfreward-operator`: run the operator against a cluster.

It watches SelfRewardRuns in all namespaces, or only those given with --namespace, serves kopf's
liveness endpoint for the chart's probes and Prometheus metrics on --metrics-port. Credentials:
the pod's ServiceAccount in a cluster, else $KUBECONFIG. Every flag has an environment variable,
as the Helm chart sets them.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import kopf
import yaml

from selfreward.operator import handlers  # noqa: F401 - registers the handlers with kopf
from selfreward.operator import metrics
from selfreward.operator.children import DEFAULTABLE, Defaults

LOG_LEVELS = ("debug", "info", "warning", "error")


def placement_defaults(path: str | None) -> dict:
    """{inference: {...}, training: {...}} from a YAML or JSON file; only DEFAULTABLE fields."""
    if not path:
        return {}
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    problems = [f"{kind}" for kind in loaded if kind not in ("inference", "training")]
    problems += [f"{kind}.{key}" for kind, fields in loaded.items() if isinstance(fields, dict) for key in fields
                 if key not in DEFAULTABLE]
    if problems:
        raise SystemExit(f"{path}: unknown placement defaults {problems}; allowed per kind: {', '.join(DEFAULTABLE)}")
    return loaded


def main(argv: list[str] | None = None) -> None:
    defaults = Defaults()
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="selfreward-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", action="append", default=[n for n in env("SELFREWARD_NAMESPACES", "").split(",") if n],
                        metavar="NAME", help="watch this namespace (repeatable; $SELFREWARD_NAMESPACES, comma-separated); "
                        "default: all namespaces")
    parser.add_argument("--liveness", default=env("SELFREWARD_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="liveness endpoint URL (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=int(env("SELFREWARD_METRICS_PORT", "8081")),
                        help="Prometheus metrics port, 0 for none (default %(default)s)")
    parser.add_argument("--inference-image", default=env("SELFREWARD_INFERENCE_IMAGE", defaults.inference_image),
                        help="worker image of inference stages a run names none for (default %(default)s)")
    parser.add_argument("--training-image", default=env("SELFREWARD_TRAINING_IMAGE", defaults.training_image),
                        help="worker image of training stages a run names none for (default %(default)s)")
    parser.add_argument("--placement-defaults", default=env("SELFREWARD_PLACEMENT_DEFAULTS"), metavar="FILE",
                        help="YAML file: {inference: {...}, training: {...}} placement applied where a run names none")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=env("SELFREWARD_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    kopf.configure(debug=args.log_level == "debug", quiet=args.log_level in ("warning", "error"))
    if args.log_level == "error":
        logging.getLogger().setLevel(logging.ERROR)
    metrics.serve(args.metrics_port)
    kopf.run(
        standalone=True,  # one replica (the chart's Deployment uses Recreate): no peering objects needed
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(defaults=Defaults(args.inference_image, args.training_image, placement_defaults(args.placement_defaults))),
    )


if __name__ == "__main__":
    main()
