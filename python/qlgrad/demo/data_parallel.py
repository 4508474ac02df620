"""Run a job in several local processes joined in a gloo process group on 127.0.0.1."""

import datetime
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing


def run_data_parallel(job: Callable[..., Any], nproc: int, args: tuple = (), timeout: float = 120.0) -> Any:
    """``job(rank, nproc, *args)`` in ``nproc`` spawned processes; returns what rank 0 returned.

    The processes meet through a TCP store that this process serves on 127.0.0.1
    (on a port the system picks, so that parallel runs cannot collide) and talk
    over gloo on the loopback interface. ``job`` and ``args`` must be picklable, ``job``
    a module-level function. Within ``timeout`` seconds every process must finish,
    and every collective must complete, or the processes still running are ended
    and ``TimeoutError`` is raised; a process that fails raises here too.
    """
    # Bound here rather than by TCPStore, which would listen on every interface.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # The store takes the socket over, and serves the rendezvous until deleted below.
    store = dist.TCPStore(
        "127.0.0.1",
        port,
        is_master=True,
        wait_for_workers=False,
        master_listen_fd=listener.detach(),
        timeout=datetime.timedelta(seconds=timeout),
    )
    results = torch.multiprocessing.get_context("spawn").Queue()
    # Job, arguments and result travel as plain pickled bytes. Given as they are, tensors
    # would be shared through file descriptors, which spawning failed to pass on for
    # quantized models, and which a process closes by exiting, read or not.
    processes = torch.multiprocessing.start_processes(
        _worker,
        args=(nproc, port, timeout, pickle.dumps((job, args)), results),
        nprocs=nproc,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        # Take the result off the queue before waiting for the processes to exit: a large
        # result keeps rank 0 from exiting until it is read.
        while True:
            # Raises if a process has died. A failing job reports first, on the queue, and
            # the report is read as soon as it comes.
            finished = processes.join(timeout=0)
            try:
                rank, succeeded, payload = results.get(timeout=0.2)
                break
            except queue.Empty:
                # Checked before the read: anything put just before exiting is read first.
                if finished:
                    raise RuntimeError("the processes finished without a result from rank 0") from None
                _check_deadline(deadline, timeout)
        if not succeeded:
            raise RuntimeError(f"data-parallel process {rank} failed:\n{payload}")
        while not processes.join(timeout=0.2):
            _check_deadline(deadline, timeout)
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.terminate()
        for process in processes.processes:
            process.join(timeout=5)
            if process.is_alive():  # stuck where SIGTERM cannot end it
                process.kill()
                process.join()
        del store
    return pickle.loads(payload)


def _check_deadline(deadline: float, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"the data-parallel processes did not finish within {timeout:g} s")


def _worker(rank: int, nproc: int, port: int, timeout: float, pickled_job: bytes, results) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise pick the interface the host name resolves to
    # The processes share the machine's cores; more than one thread each would oversubscribe them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    limit = datetime.timedelta(seconds=timeout)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=limit)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=nproc, timeout=limit)
    try:
        job, args = pickle.loads(pickled_job)
        result = job(rank, nproc, *args)
    except BaseException:
        # Reported before this process leaves the group: the first failure reaches the
        # caller first, ahead of the errors it causes in the others (a peer gone from a collective).
        results.put((rank, False, traceback.format_exc()))
        raise
    else:
        if rank == 0:
            results.put((rank, True, pickle.dumps(result)))
    finally:
        dist.destroy_process_group()
