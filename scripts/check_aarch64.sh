#!/usr/bin/env bash
# Cross-compiles libqlgrad (the shared_library of src/meson.build, nothing else) for aarch64 Linux
# against torch's aarch64 wheel from PyPI, with Debian's cross compiler, then runs a C++ program
# linked against it (scripts/aarch64/smoke.cpp) under qemu-user.
#   scripts/check_aarch64.sh              build and run
#   scripts/check_aarch64.sh --build-only build only (no qemu, no CUDA runtime download)
# JOBS=N limits the parallel compile jobs (default: ninja's). Everything fetched or built stays
# in build-aarch64/ (QLGRAD_AARCH64_DIR to move it), which later runs reuse; delete it to start
# over. Needs apt-get (as root, or sudo) when the cross compiler or qemu is missing, python3, and PyPI.
#
# The build is the project's own, configured from the repository root with a Meson cross file, so
# the sources, flags and options are those of src/meson.build and meson.build; only the library
# target is built. subprojects/torch finds torch by importing it in Python, which an aarch64 wheel
# does not allow on this machine: scripts/aarch64/torch_stand_in.py answers in its place.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here="$root/scripts/aarch64"
cache=${QLGRAD_AARCH64_DIR:-$root/build-aarch64}
run=1
case "${1:-}" in
  "") ;;
  --build-only) run=0 ;;
  *) echo "usage: scripts/check_aarch64.sh [--build-only]" >&2; exit 2 ;;
esac

# The versions pinned for development: the same torch, Meson, ninja and nanobind.
pin() { sed -n "s/^$1==//p" "$root/requirements/dev.txt"; }
torch_version=$(pin torch)

# Wall time of each phase, printed when the next one starts, and of the whole run.
phase_name="" phase_start=$SECONDS
phase() {
  if [ -n "$phase_name" ]; then
    printf -- '-- %s: %d s\n' "$phase_name" $((SECONDS - phase_start))
  fi
  phase_name=$1 phase_start=$SECONDS
  if [ -n "$1" ]; then
    printf '== %s\n' "$1"
  fi
}
finish() {
  phase ""
  printf -- '-- total: %d s\n' "$SECONDS"
  exit 0
}

mkdir -p "$cache"
# Like Meson's build directories, the cache ignores itself.
echo '*' >"$cache/.gitignore"

phase "toolchain (apt)"
packages=()
command -v aarch64-linux-gnu-g++ >/dev/null || packages+=(g++-aarch64-linux-gnu)
if [ "$run" = 1 ]; then
  command -v qemu-aarch64 >/dev/null || packages+=(qemu-user)
fi
if [ ${#packages[@]} -gt 0 ]; then
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  # The package lists are fetched only when the install cannot proceed without them.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
fi
aarch64-linux-gnu-g++ --version | head -n 1

phase "build tools (venv)"
venv="$cache/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
export PATH="$venv/bin:$PATH"
# nanobind too: meson.build configures the nanobind subproject whatever target is built.
python -m pip install --quiet "meson==$(pin meson)" "ninja==$(pin ninja)" "nanobind==$(pin nanobind)"

phase "torch $torch_version aarch64 wheel"
downloads="$cache/downloads"
shopt -s nullglob
wheels=("$downloads"/torch-"$torch_version"-*_aarch64.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  # Any CPython 3 wheel would do (the C++ headers and libraries are the same); 3.11 is the project's.
  python -m pip download --quiet --no-deps --no-cache-dir --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --python-version 3.11 -d "$downloads" "torch==$torch_version"
  wheels=("$downloads"/torch-"$torch_version"-*_aarch64.whl)
fi
wheel=${wheels[0]}
# The headers and the CPU libraries: PyPI's aarch64 wheel is a CUDA build, and its CUDA and Python
# libraries (libtorch_cuda.so alone is 430 MB) are left out. The directory holding torch/ goes on
# PYTHONPATH.
torch_root="$cache/torch-$torch_version"
if [ ! -d "$torch_root" ]; then
  rm -rf "$torch_root.partial"
  python - "$wheel" "$torch_root.partial" <<'EOF'
import sys
import zipfile
from fnmatch import fnmatch

wheel, destination = sys.argv[1:]
keep = ("torch/include/*", "torch/lib/*", "torch/version.py")
drop = ("torch/lib/*cuda*", "torch/lib/*nvrtc*", "torch/lib/*nvshmem*", "torch/lib/libtorch_python.so")
with zipfile.ZipFile(wheel) as archive:
    names = [
        name
        for name in archive.namelist()
        if any(fnmatch(name, p) for p in keep) and not any(fnmatch(name, p) for p in drop)
    ]
    archive.extractall(destination, names)
EOF
  mv "$torch_root.partial" "$torch_root"
fi
torch_dir="$torch_root/torch"
cp "$here/torch_stand_in.py" "$torch_dir/__init__.py"
export PYTHONPATH="$torch_root${PYTHONPATH:+:$PYTHONPATH}"
du -sh "$wheel" "$torch_dir"
python -c 'import torch; print(f"torch {torch.__version__}, _GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")'

phase "configure (meson, cross)"
build="$cache/build"
meson setup --reconfigure "$build" "$root" --cross-file "$here/aarch64-linux-gnu.ini" >"$cache/meson-setup.log" ||
  { cat "$cache/meson-setup.log"; exit 1; }
grep -E "^(C\+\+ compiler for the host machine|Host machine cpu family|Run-time dependency OpenMP)" "$cache/meson-setup.log" || true

phase "compile libqlgrad"
library="$build/src/libqlgrad.so"
# -k 0: a failing file does not hide the others.
ninja -C "$build" -k 0 ${JOBS:+-j "$JOBS"} src/libqlgrad.so
aarch64-linux-gnu-readelf -h "$library" | grep -q 'Machine:.*AArch64' || { echo "$library is not aarch64" >&2; exit 1; }
if command -v file >/dev/null; then file "$library"; fi
aarch64-linux-gnu-readelf -d "$library" | grep NEEDED

[ "$run" = 1 ] || finish

phase "CUDA runtime for loading libtorch_cpu (PyPI)"
# libtorch_cpu.so of this CUDA build needs libcudart and libcupti to load, even where no GPU is
# used; they come from the wheels torch itself requires, at the version its metadata pins. libtorch.so
# lists libtorch_cuda.so (430 MB, with gigabytes of CUDA libraries behind it) but uses no symbol
# of it: an empty library of that name stands in.
runtime="$cache/runtime-lib"
if [ ! -d "$runtime" ]; then
  rm -rf "$runtime.partial" "$downloads/cuda"
  toolkit=$(python - "$wheel" <<'EOF'
import re
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    version = re.search(r"^Requires-Dist: cuda-toolkit\[[^]]*\]==([^;\s]+)", archive.read(metadata).decode(), re.M)
print(f"cuda-toolkit[cudart,cupti]=={version.group(1)}")
EOF
  )
  # pip takes platform tags literally: the manylinux tags an aarch64 system with glibc 2.28 accepts.
  platforms=(--platform manylinux2014_aarch64)
  for minor in $(seq 17 28); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
  python -m pip download --quiet --no-cache-dir --only-binary=:all: --python-version 3.11 \
    "${platforms[@]}" -d "$downloads/cuda" "$toolkit"
  mkdir -p "$runtime.partial"
  python - "$runtime.partial" "$downloads"/cuda/nvidia_*.whl <<'EOF'
import os
import sys
import zipfile
from fnmatch import fnmatch

destination, *wheels = sys.argv[1:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if fnmatch(name, "*/lib/libcudart.so.*") or fnmatch(name, "*/lib/libcupti.so.*"):
                with open(os.path.join(destination, os.path.basename(name)), "wb") as out:
                    out.write(archive.read(name))
EOF
  aarch64-linux-gnu-gcc -shared -x c /dev/null -Wl,-soname,libtorch_cuda.so -o "$runtime.partial/libtorch_cuda.so"
  mv "$runtime.partial" "$runtime"
fi
ls "$runtime"

phase "compile and run the test program under qemu"
# The flags python/qlgrad/qlgrad.pc gives C++ consumers, with the build tree's paths and the C++ ABI
# the build found; tests/cpp for the C++ tests' tally and packing helpers.
abi=$(python -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
smoke="$build/smoke"
aarch64-linux-gnu-g++ -std=c++20 -D_GLIBCXX_USE_CXX11_ABI="$abi" -I"$root/include" -I"$root/tests/cpp" \
  -isystem "$torch_dir/include" -isystem "$torch_dir/include/torch/csrc/api/include" "$here/smoke.cpp" -o "$smoke" \
  -L"$build/src" -lqlgrad -L"$torch_dir/lib" -ltorch -ltorch_cpu -lc10 -Wl,-rpath-link,"$runtime"

# qemu's -L directory is where the guest's absolute paths are looked up first, falling back to the
# host's: lib/ holds the cross toolchain's loader and libraries, and proc/cpuinfo describes the
# emulated CPU (a Neoverse N1). Without it the guest reads the host's x86 /proc/cpuinfo, and the
# cpuinfo library in libc10 crashes on its first query.
qemu_root="$cache/qemu-root"
mkdir -p "$qemu_root/proc"
ln -sfn /usr/aarch64-linux-gnu/lib "$qemu_root/lib"
for cpu in $(seq 0 $(($(nproc --all) - 1))); do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' \
    "$cpu" "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
done >"$qemu_root/proc/cpuinfo"
# libqlgrad's runpath is set for its installed place beside torch; here the loader is told.
# oneDNN's CPU detection prints that it cannot open MIDR_EL1 in sysfs (the host's has none): harmless.
LD_LIBRARY_PATH="$build/src:$torch_dir/lib:$runtime" qemu-aarch64 -cpu neoverse-n1 -L "$qemu_root" "$smoke"
finish
