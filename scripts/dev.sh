#!/usr/bin/env bash
# Set up a development environment in .venv (idempotent) and run one job in it.
#   scripts/dev.sh setup   create .venv, install the pinned tools, build and install qlgrad
#   scripts/dev.sh demo    setup, then the demo
#   scripts/dev.sh lint    the linters alone: ruff (lint and format) and clang-format
#   scripts/dev.sh test    setup, the linters, then the whole test suite (pytest, with the Trainer's tests
#                          again on the earlier supported transformers; meson test, and the C++
#                          tests again under AddressSanitizer, LeakSanitizer and
#                          UndefinedBehaviorSanitizer, and under ThreadSanitizer; the aarch64
#                          cross-build and its test program under qemu), then the asv benchmarks
#                          once in quick mode
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
  # Two processes, each test file in one of them (files share their modules' set-up). Each runs
  # torch's OpenMP threads, one per core; waiting for work they sleep (PASSIVE) instead of
  # spinning, which libgomp does by default and which took the cores from the other process's
  # threads: the suite took 8.5 minutes with them spinning, 6 without.
  OMP_WAIT_POLICY=PASSIVE python -m pytest -q -n 2 --dist loadfile tests
  run_previous_client_tests
  meson test -C "$build" --print-errorlogs
  python scripts/update_reliability_table.py record-meson build "$build/meson-logs/testlog.json"
  # AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer combine, and one build
  # takes half the time of two; float-to-integer conversions, which quantization is made of,
  # are checked too (not part of -fsanitize=undefined).
  run_sanitized_cpp_tests asan-ubsan -Db_sanitize=address,undefined -Dcpp_args=-fsanitize=float-cast-overflow
  # ThreadSanitizer excludes the others. The parameter is explained in tests/cpp/meson.build.
  run_sanitized_cpp_tests tsan -Db_sanitize=thread -Dcpp_args=--param=tsan-instrument-func-entry-exit=0
  # libqlgrad cross-compiled for aarch64 against torch's aarch64 wheel, and a C++ program using it
  # run under qemu: the ARM build, which no machine here runs natively, keeps compiling and working.
  bash "$root/scripts/check_aarch64.sh"
  # The benchmarks once, quickly: this fails when a benchmark errors, not on any timing. One shape
  # per kernel family (a stream, streams in passes, the panel GEMM's shared panels) runs every
  # benchmark's code; the other shapes only time it again.
  QLGRAD_ASV_SHAPES=1x4096x4096,32x768x768,256x768x3072 bash "$root/bench/run_asv.sh"
}

# The Trainer's tests again with the earlier transformers release qlgrad supports
# (requirements/previous-clients.txt), installed in the build directory and put first on the path.
run_previous_client_tests() {
  local previous="$build/previous-clients" release
  release=$(sed -n 's/^transformers==//p' "$root/requirements/previous-clients.txt")
  python -m pip install --quiet --no-deps --upgrade --target "$previous" -r "$root/requirements/previous-clients.txt"
  PYTHONPATH="$previous" python -c 'import sys, transformers
found = transformers.__version__
sys.exit(None if found == sys.argv[1] else f"transformers {found} found first, {sys.argv[1]} expected")' "$release"
  PYTHONPATH="$previous" OMP_WAIT_POLICY=PASSIVE python -m pytest -q tests/test_transformers.py
}

# run_sanitized_cpp_tests LABEL MESON_OPTION...
# The C++ tests built with sanitizers in build/LABEL, configured by plain Meson with this
# environment's Python (it finds torch and nanobind), and recorded under LABEL. At -O1, the
# level the sanitizers' manuals advise: every access is instrumented as at -O3, and the build
# takes half the time.
run_sanitized_cpp_tests() {
  local label=$1 sanitized_build="$build/$1" start=$SECONDS
  shift
  # --reconfigure: a build directory from an earlier run gets today's options too.
  meson setup --reconfigure "$sanitized_build" -Doptimization=1 "$@"
  meson test -C "$sanitized_build" --print-errorlogs
  python scripts/update_reliability_table.py record-meson "$label" "$sanitized_build/meson-logs/testlog.json" \
    --seconds $((SECONDS - start))
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
