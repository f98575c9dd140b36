"""`python -m selfreward.operator` / `selfreward-operator`: run the operator against a cluster.

It watches SelfRewardRuns in all namespaces, or only those given with --namespace, and serves
kopf's liveness endpoint for the chart's probes. Credentials: the pod's ServiceAccount in a
cluster, else $KUBECONFIG.
"""

from __future__ import annotations

import argparse
import os

import kopf

from selfreward.operator import handlers  # noqa: F401 - registers the handlers with kopf
from selfreward.operator.children import Defaults


def main(argv: list[str] | None = None) -> None:
    defaults = Defaults()
    parser = argparse.ArgumentParser(prog="selfreward-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", action="append", default=[], metavar="NAME",
                        help="watch this namespace (repeatable); default: all namespaces")
    parser.add_argument("--liveness", default=os.environ.get("SELFREWARD_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="liveness endpoint URL (default %(default)s)")
    parser.add_argument("--inference-image", default=os.environ.get("SELFREWARD_INFERENCE_IMAGE", defaults.inference_image),
                        help="worker image of inference stages a run names none for (default %(default)s)")
    parser.add_argument("--training-image", default=os.environ.get("SELFREWARD_TRAINING_IMAGE", defaults.training_image),
                        help="worker image of training stages a run names none for (default %(default)s)")
    parser.add_argument("--verbose", action="store_true", help="log every handled event")
    args = parser.parse_args(argv)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,  # one replica (the chart's Deployment uses Recreate): no peering objects needed
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(defaults=Defaults(args.inference_image, args.training_image)),
    )


if __name__ == "__main__":
    main()
