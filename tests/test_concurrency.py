"""Threads share one quantized model: forward and backward in every precision while another
thread empties the weight cache and changes its limit.

The threads run in a subprocess, so that a crash or a deadlock (which may hold the GIL and stop
every Python thread, timeouts included) fails the test instead of ending or stalling the run.
"""

import json
import threading
import time
from pathlib import Path

import torch
from torch import nn

import qlgrad
from helpers import record_reliability, run_python

TESTS_DIR = Path(__file__).parent
WORKERS = 8
ITERATIONS_PER_WORKER = 1000
PRECISIONS = ("fp32", "bf16", "int8")
# 0 disables the cache; 4 KiB holds no layer of the model; 1 GiB holds them all.
CACHE_LIMITS = (0, 1 << 12, 1 << 16, 1 << 30)
JOIN_TIMEOUT_SECONDS = 240


def shared_model():
    """int8 layers with fused ReLU and an fp16 layer, as quantize_dynamic makes them; the second's
    256 outputs make a gradient deep enough for fp32's three bfloat16 products on AMX tiles."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 16)).eval()
    model = torch.ao.quantization.fuse_modules(model, [["0", "1"], ["2", "3"]])
    qconfigs = {
        "0": torch.ao.quantization.default_dynamic_qconfig,
        "2": torch.ao.quantization.per_channel_dynamic_qconfig,
        "4": torch.ao.quantization.float16_dynamic_qconfig,
    }
    return torch.ao.quantization.quantize_dynamic(model, qconfigs)


def input_gradient(model, x, grad_output, precision):
    x = x.clone().requires_grad_()
    with qlgrad.backward_precision(precision):
        y = model(x)
    y.backward(grad_output)
    return x.grad


def stress(workers=WORKERS, iterations=ITERATIONS_PER_WORKER):
    """Runs the workers and the cache thread; returns what they saw, as a dict."""
    model = shared_model()
    inputs = [(torch.randn(batch, 32), torch.randn(batch, 16)) for batch in (1, 7, 33)]
    expected = {
        (precision, i): input_gradient(model, x, g, precision)
        for precision in PRECISIONS
        for i, (x, g) in enumerate(inputs)
    }
    mismatches = {precision: 0 for precision in PRECISIONS}
    errors, passes, cache_changes, bytes_over_limit = [], [0] * workers, [0], [0]
    stop = threading.Event()

    def worker(index):
        for iteration in range(iterations):
            precision, i = PRECISIONS[(index + iteration) % len(PRECISIONS)], iteration % len(inputs)
            try:
                got = input_gradient(model, *inputs[i], precision)
            except Exception as error:  # noqa: BLE001 - reported to the test
                errors.append(f"worker {index}: {type(error).__name__}: {error}")
                return
            if not torch.equal(got, expected[(precision, i)]):
                mismatches[precision] += 1
            passes[index] += 1

    def change_cache():
        while not stop.is_set():
            qlgrad.clear_cache()
            qlgrad.set_cache_limit(CACHE_LIMITS[cache_changes[0] % len(CACHE_LIMITS)])
            info = qlgrad.cache_info()
            bytes_over_limit[0] += info.bytes > info.limit_bytes
            cache_changes[0] += 1
            time.sleep(0)  # lets the workers have the GIL between changes

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    cache_thread = threading.Thread(target=change_cache, daemon=True)
    for thread in [*threads, cache_thread]:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_SECONDS)
    stop.set()
    cache_thread.join(timeout=JOIN_TIMEOUT_SECONDS)
    return {
        "threads": workers,
        "iterations_per_thread": iterations,
        "forward_backward_passes": sum(passes),
        "mismatches": mismatches,
        "errors": errors,
        "hung_threads": sum(thread.is_alive() for thread in [*threads, cache_thread]),
        "cache_changes": cache_changes[0],
        "cache_over_limit": bytes_over_limit[0],
    }


def test_threads_sharing_layers_get_the_single_threaded_gradients():
    result = run_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import test_concurrency
        print(json.dumps(test_concurrency.stress()))
        """,
        timeout=JOIN_TIMEOUT_SECONDS + 120,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    record_reliability("concurrency", "Python threads on a shared model", seen)
    assert seen["hung_threads"] == 0
    assert seen["errors"] == []
    assert seen["forward_backward_passes"] == WORKERS * ITERATIONS_PER_WORKER
    # Bit for bit in every precision: no result depends on other threads, on timing or on
    # whether the weight came from the cache.
    assert seen["mismatches"] == {precision: 0 for precision in PRECISIONS}
    assert seen["cache_changes"] > 0 and seen["cache_over_limit"] == 0
