#!/usr/bin/env bash
# Stop everything testbed/up.sh started (by pid file). The state dir and its PKI are kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m testbed.testbed down
