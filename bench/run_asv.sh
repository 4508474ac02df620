#!/usr/bin/env bash
# Run the asv suite once, quickly (one sample per benchmark), against the qlgrad installed
# in the Python on PATH. Exits non-zero when any benchmark fails (`asv run` returns 2) or
# the suite cannot be imported (1).
#   bench/run_asv.sh [extra asv run arguments, e.g. --bench QlgradBackward]
set -euo pipefail

config="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/asv.conf.json"

# asv asks interactively about the machine unless ~/.asv-machine.json describes it.
if [ ! -f "$HOME/.asv-machine.json" ]; then
  python -m asv machine --yes --config "$config"
fi
python -m asv run --config "$config" --python=same --quick --show-stderr "$@"
