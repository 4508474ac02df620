"""What the benchmark scripts read about the machine and their own process (Linux): the CPU and
its instruction-set extensions, the time tasks waited for a CPU, resident and peak memory.

No asv benchmark is defined here (asv imports every module of this folder)."""

import ctypes
import gc
import os
import time

CPU_FLAGS_OF_INTEREST = ("avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """CPU model (with its CPUID family and model: a virtual machine's model name may not say
    which generation it is) and the instruction-set extensions that decide bf16 and int8 GEMM speed."""
    fields, flags = {}, set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                    break  # the first CPU's fields are enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        model += f" (family {fields['cpu family']} model {fields['model']})"
    present = " ".join(flag for flag in CPU_FLAGS_OF_INTEREST if flag in flags) or "none"
    absent = " ".join(flag for flag in CPU_FLAGS_OF_INTEREST if flag not in flags) or "none"
    return f"{model}, {os.cpu_count()} CPUs; has {present}; lacks {absent}"


def cpu_wait_microseconds() -> int | None:
    """Time, summed since boot, during which some runnable task waited for a CPU (Linux
    pressure stall information); None where the kernel does not provide it."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            return int(pressure.readline().split()[-1].removeprefix("total="))
    except (OSError, ValueError, IndexError):
        return None


class CpuWaitMeter:
    """Started when made: ``share()`` is the part of the wall-clock time since then during which
    some task waited for a CPU (other processes disturbed what ran meanwhile)."""

    def __init__(self):
        self._wait, self._start = cpu_wait_microseconds(), time.perf_counter()

    def share(self) -> float | None:
        """None where the kernel does not provide the waiting time."""
        wait, elapsed = cpu_wait_microseconds(), time.perf_counter() - self._start
        if self._wait is None or wait is None:
            return None
        return (wait - self._wait) / 1e6 / elapsed


def resident_bytes() -> int:
    """The process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_LIBC = ctypes.CDLL("libc.so.6")


def trimmed_resident_bytes() -> int:
    """The process's resident memory, once the garbage collector and glibc have returned what they can."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return resident_bytes()


def reset_peak_resident_bytes() -> bool:
    """Make the kernel's high-water mark of resident memory (VmHWM) the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    """The kernel's high-water mark of the process's resident memory (VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
