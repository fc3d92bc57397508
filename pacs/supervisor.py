"""Pre-fork process supervision for ``pacs serve``.

The parent creates the listening sockets, then forks worker processes that all accept on them
(the idle one wins each connection). The parent only watches: it reports readiness once every worker
listens, restarts a worker that dies, and on SIGINT/SIGTERM asks every worker to stop gracefully
(in-flight associations and requests finish) and waits for them.

Signals are blocked in every process and taken with ``sigwait``/``sigtimedwait``, so no handler ever
runs in the middle of a store.

A worker dies with the parent: if the parent is killed outright (SIGKILL, the OOM killer), the kernel
kills its workers too (Linux ``PR_SET_PDEATHSIG``). Orphaned workers would otherwise keep accepting
on the shared ports unsupervised, and a restarted server could not listen on them.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_RESTART_DELAY = 1.0

#: Runs in the worker: build everything, call ``ready()`` once listening, return when ``wait_stop`` says.
WorkerMain = Callable[[int, Callable[[], None], Callable[[], int]], None]


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere a no-op), and
    exit at once if the parent is already gone (it died between the fork and this call).

    Strictly, the kernel sends the signal when the *thread* that forked this process ends; the
    supervisor forks every worker from the one thread that runs it for the life of the process."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig = 1
    if prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        log.warning("cannot tie worker %d to the supervisor's life: errno %d", os.getpid(), errno)
    if os.getppid() != parent_pid:
        os._exit(1)


#: glibc malloc arenas per worker. By default glibc makes up to eight per core, one for each thread
#: that allocates while the others' arenas are busy, and each keeps the memory freed in it. A
#: worker's threads (an association's two, HTTP handlers, ingest) come and go, so its resident
#: memory crept up with every burst of large receives: bench/fuzz.py's network part with deflate
#: bombs every round took a worker from 104 MB to 202 MB in 11 rounds; with two arenas it stayed at
#: 146 MB from the second round on. Python's small objects do not use these arenas, and the large
#: buffers are allocated under the GIL anyway.
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX)``), unless the operator
    set ``MALLOC_ARENA_MAX`` in the environment; a no-op on another C library."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    m_arena_max = -8
    if mallopt(m_arena_max, arenas) != 1:
        log.warning("cannot limit malloc arenas of worker %d", os.getpid())


#: What :func:`keep_large_blocks` sets: blocks up to this size come from the heap (glibc's largest
#: mmap threshold, HEAP_MAX_SIZE / 2 on 64-bit) ...
MMAP_THRESHOLD = 32 << 20
#: ... and the heap's free top goes back to the system only beyond this.
TRIM_THRESHOLD = 64 << 20


def keep_large_blocks() -> bool:
    """Let a worker reuse the large blocks that retrieves and renderings free (glibc's
    ``mallopt(M_MMAP_THRESHOLD)`` and ``M_TRIM_THRESHOLD``, unless the operator set
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``); False where nothing was set.

    A WADO response allocates megabytes at a time: chunks of an object, an 18 MB frame, its 8-bit
    image. glibc maps such blocks straight from the system and returns them when freed (its
    threshold adapts only so far), so that every request faults in each 4 kB page afresh: on a
    virtual machine a third of the time of rendering a radiograph (24 ms of system time per JPEG of
    a 3000 x 3000 frame, 5 to 8 ms with this), and half the system time of sending an instance.
    With blocks up to 32 MB taken from the heap, and the heap's free top returned to the system only
    beyond 64 MB, the next request reuses those pages. Memory stays bounded by what was in use at
    once plus 64 MB per malloc arena (:data:`MALLOC_ARENAS`); blocks above 32 MB (a transcoded
    instance, say) are still mapped and returned."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1 and mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1
    )


def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM arrives (they are blocked in every thread); return it."""
    return signal.sigwait(STOP_SIGNALS)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    worker_count: int
    worker_main: WorkerMain
    on_ready: Callable[[], None]
    stop_timeout: float = 40.0
    #: Called in the supervisor with the index of a worker that exited unexpectedly.
    on_worker_exit: Callable[[int], None] | None = None
    _workers: dict[int, _Worker] = field(default_factory=dict)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        context = multiprocessing.get_context("fork")
        self._ready_queue = context.SimpleQueue()
        self._context = context
        announced = False
        for index in range(1, self.worker_count + 1):
            self._spawn(index)
        try:
            while True:
                received = signal.sigtimedwait(STOP_SIGNALS, 0.2)
                if received is not None:
                    log.info("received %s, stopping", signal.Signals(received.si_signo).name)
                    return self._stop_all(0)
                while not self._ready_queue.empty():
                    index = self._ready_queue.get()
                    if index in self._workers:
                        self._workers[index].ready = True
                if not announced and all(w.ready for w in self._workers.values()):
                    announced = True
                    self.on_ready()
                failed = self._reap()
                if failed is not None and not announced:
                    log.error("worker %d failed during start-up (exit code %s); stopping", *failed)
                    return self._stop_all(1)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _spawn(self, index: int) -> None:
        queue = self._ready_queue
        worker_main = self.worker_main
        parent_pid = os.getpid()

        def entry() -> None:
            die_with_parent(parent_pid)
            limit_malloc_arenas()
            keep_large_blocks()
            try:
                worker_main(index, lambda: queue.put(index), wait_for_stop_signal)
            except BaseException:
                log.exception("worker %d crashed", index)
                os._exit(1)
            os._exit(0)

        process = self._context.Process(target=entry, name=f"worker-{index}", daemon=False)
        process.start()
        self._workers[index] = _Worker(index, process, time.monotonic())

    def _reap(self) -> tuple[int, Any] | None:
        """Restart dead workers; return (index, exit code) of the first one that died unready."""
        died_unready = None
        for index, worker in list(self._workers.items()):
            if worker.process.is_alive():
                continue
            code = worker.process.exitcode
            worker.process.join()
            if self.on_worker_exit is not None:
                self.on_worker_exit(index)
            if not worker.ready:
                died_unready = died_unready or (index, code)
                continue
            log.error("worker %d exited unexpectedly (exit code %s); restarting it", index, code)
            if time.monotonic() - worker.started < 5:
                time.sleep(_RESTART_DELAY)
            self._spawn(index)
            # A restarted worker is serving as soon as it listens; the announcement is not repeated.
            self._workers[index].ready = True
        return died_unready

    def _stop_all(self, code: int) -> int:
        for worker in self._workers.values():
            if worker.process.is_alive() and worker.process.pid:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for worker in self._workers.values():
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in %.0f s; killing it", worker.index, self.stop_timeout)
                worker.process.kill()
                worker.process.join()
        return code
