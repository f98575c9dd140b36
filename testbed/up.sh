#!/usr/bin/env bash
# Build (first time only) and start the test control plane on 127.0.0.1, then print:
#   export KUBECONFIG=...
#   export PATH=<dir with kubectl and helm>:$PATH
# Use: eval "$(testbed/up.sh)". State: ${SELFREWARD_TESTBED_STATE:-/tmp/selfreward-testbed}.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m testbed.testbed up
