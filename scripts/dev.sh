#!/usr/bin/env bash
# Set up a development environment in .venv (idempotent) and run one job in it.
#   scripts/dev.sh setup   create .venv, install the pinned tools, build and install qlgrad
#   scripts/dev.sh demo    setup, then the demo
#   scripts/dev.sh lint    the linters alone: ruff (lint and format) and clang-format
#   scripts/dev.sh test    setup, the linters, then the whole test suite (pytest, meson test, and the C++
#                          tests again under AddressSanitizer, LeakSanitizer and
#                          UndefinedBehaviorSanitizer, and under ThreadSanitizer; the aarch64
#                          cross-build and its test program under qemu; these three build
#                          while pytest runs), then the asv benchmarks once in quick mode
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

# The code as ruff and clang-format want it (pyproject.toml, .clang-format); checks only.
lint() {
  cd "$root"
  python -m ruff check .
  python -m ruff format --check .
  git ls-files -co --exclude-standard '*.cpp' '*.h' | xargs clang-format --dry-run --Werror
}

run_tests() {
  cd "$root"
  # The sanitized builds and the aarch64 cross-build compile while pytest runs (much of pytest's
  # time is one thread's, or waits on subprocesses), in a job of their own; its log is printed,
  # and its status counts, when pytest is done.
  local builds_log="$build/background-builds.log"
  mkdir -p "$build"
  build_in_background >"$builds_log" 2>&1 &
  local builds=$!
  python -m pytest -q tests
  meson test -C "$build" --print-errorlogs
  python scripts/update_reliability_table.py record-meson build "$build/meson-logs/testlog.json"
  local status=0
  wait "$builds" || status=$?
  cat "$builds_log"
  [ "$status" = 0 ] || { echo "the sanitized builds or the aarch64 check failed (status $status)" >&2; exit "$status"; }
  run_sanitized_cpp_tests asan-ubsan
  run_sanitized_cpp_tests tsan
  # The benchmarks once, quickly: this fails when a benchmark errors, not on any timing.
  bash "$root/bench/run_asv.sh"
}

# The C++ tests' builds with sanitizers, and the aarch64 check, one after the other.
build_in_background() {
  set -euo pipefail
  # AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer combine, and one build
  # takes half the time of two; float-to-integer conversions, which quantization is made of,
  # are checked too (not part of -fsanitize=undefined).
  build_sanitized asan-ubsan -Db_sanitize=address,undefined -Dcpp_args=-fsanitize=float-cast-overflow
  # ThreadSanitizer excludes the others. The parameter is explained in tests/cpp/meson.build.
  build_sanitized tsan -Db_sanitize=thread -Dcpp_args=--param=tsan-instrument-func-entry-exit=0
  # libqlgrad cross-compiled for aarch64 against torch's aarch64 wheel, and a C++ program using it
  # run under qemu: the ARM build, which no machine here runs natively, keeps compiling and working.
  bash "$root/scripts/check_aarch64.sh"
}

# build_sanitized LABEL MESON_OPTION...
# The C++ tests built with sanitizers in build/LABEL, configured by plain Meson with this
# environment's Python (it finds torch and nanobind); the build's seconds go to build/LABEL.seconds.
build_sanitized() {
  local label=$1 start=$SECONDS
  shift
  # --reconfigure: a build directory from an earlier run gets today's options too.
  meson setup --reconfigure "$build/$label" "$@"
  meson compile -C "$build/$label"
  echo $((SECONDS - start)) >"$build/$label.seconds"
}

# run_sanitized_cpp_tests LABEL
# The C++ tests of build/LABEL (build_sanitized), run and recorded under LABEL with the seconds
# of the build and the run.
run_sanitized_cpp_tests() {
  local label=$1 start=$SECONDS
  meson test -C "$build/$label" --print-errorlogs
  python scripts/update_reliability_table.py record-meson "$label" "$build/$label/meson-logs/testlog.json" \
    --seconds $(($(cat "$build/$label.seconds") + SECONDS - start))
}

case "${1:-}" in
  setup) setup ;;
  # One command per line: under `set -e` a failure inside a function stops the script only
  # where the function is not part of an && list.
  demo)
    setup
    python -m qlgrad.demo "${@:2}"
    ;;
  lint)
    export PATH="$venv/bin:$PATH"
    lint
    ;;
  test)
    setup
    lint
    run_tests
    ;;
  *) echo "usage: scripts/dev.sh setup|demo|lint|test" >&2; exit 2 ;;
esac
