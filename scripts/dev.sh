#!/usr/bin/env bash
# Set up a development environment in .venv (idempotent) and run one job in it.
#   scripts/dev.sh setup   create .venv, install the pinned tools, build and install qlgrad
#   scripts/dev.sh demo    setup, then the demo
#   scripts/dev.sh test    setup, then the whole test suite (pytest, meson test, and the C++
#                          tests again under AddressSanitizer and LeakSanitizer), then the
#                          asv benchmarks once in quick mode
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
build="$root/build"

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  export PATH="$venv/bin:$PATH"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r "$root/requirements/dev.txt"
  # Without their dependencies: those that pip would resolve include another torch.
  python -m pip install --quiet --no-deps -r "$root/requirements/clients.txt"
  # No build isolation: qlgrad must compile against the very torch it runs with.
  python -m pip install --quiet --no-build-isolation --no-deps --force-reinstall \
    -Cbuild-dir="$build" "$root"
}

run_tests() {
  cd "$root"
  python -m pytest -q tests
  meson test -C "$build" --print-errorlogs
  python scripts/update_reliability_table.py record-meson build "$build/meson-logs/testlog.json"
  run_sanitized_cpp_tests
  # The benchmarks once, quickly: this fails when a benchmark errors, not on any timing.
  bash "$root/bench/run_asv.sh"
}

# The C++ tests built with AddressSanitizer and LeakSanitizer, in a build directory of their own
# configured by plain Meson with this environment's Python (it finds torch and nanobind).
run_sanitized_cpp_tests() {
  local asan_build="$build/asan" start=$SECONDS
  if [ ! -f "$asan_build/build.ninja" ]; then
    meson setup "$asan_build" -Db_sanitize=address
  fi
  meson test -C "$asan_build" --print-errorlogs
  python scripts/update_reliability_table.py record-meson asan "$asan_build/meson-logs/testlog.json" \
    --seconds $((SECONDS - start))
}

case "${1:-}" in
  setup) setup ;;
  demo) setup && python -m qlgrad.demo "${@:2}" ;;
  test) setup && run_tests ;;
  *) echo "usage: scripts/dev.sh setup|demo|test" >&2; exit 2 ;;
esac
