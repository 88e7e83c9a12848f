"""Drawing and writing off the training thread: one daemon thread per ``Reporter``, a bounded queue, in order.

A check hands the reporter a snapshot of its ``CheckRecord`` (``snapshot()``: CPU tensors cloned, rules and
events copied, so the next check cannot change what this one draws) and returns; the ``Worker`` draws and writes
the snapshots one at a time, in the order they came. Its queue holds at most ``maxsize`` jobs: when the disk or a
logger is slower than the checks, ``submit`` waits for room (the training thread slows down, memory never grows).

``flush()`` waits until every job so far is done (the end of ``fit`` and ``validate``, an exception, teardown);
``close()`` flushes, then stops and joins the thread. The thread is started on the first job and again after a
``close()``; a pickled or deep-copied worker leaves its thread, queue and lock behind and starts its own.

Warnings raised while a job runs on the thread (a failing writer) are not issued there: ``warn()`` keeps them and
the next ``submit`` or ``flush`` on the calling thread issues them, so ``warnings.catch_warnings`` and pytest see
them where training runs. A job that raises is reported the same way (``on_error``) and later jobs still run.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

#: One job at a time in the whole process, whichever monitor it comes from: fonts and caches are shared.
DRAWING = threading.RLock()

_STOP = object()


def snapshot(record: Any) -> Any:
    """A copy of a dataclass record that shares nothing mutable with it: tensors cloned to the CPU, containers and
    other values deep-copied."""
    return dataclasses.replace(record, **{f.name: _copy(getattr(record, f.name))
                                          for f in dataclasses.fields(record) if f.init})


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if type(value) is dict:
        return type(value)((_copy(k), _copy(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_copy(v) for v in value)
    return copy.deepcopy(value)


class Worker:
    """Runs jobs (callables without arguments) on one daemon thread, in order, with at most ``maxsize`` waiting.

    Args:
        maxsize: Jobs waiting at most (the one running is not counted); ``submit`` blocks when they are that many.
        on_error: Called on the thread with an exception a job raised (default: one warning per exception type).
        name: The thread's name.
    """

    def __init__(self, maxsize: int = 2, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "ig-lightning-pictures") -> None:
        if maxsize < 1:
            raise ValueError(f"`maxsize` must be at least 1, got {maxsize}")
        self.maxsize, self.on_error, self.name = maxsize, on_error, name
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue = queue.Queue(self.maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._errors_said: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize, "on_error": self.on_error, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- the training thread's side -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def on_thread(self) -> bool:
        """True on the worker's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (start the thread if needed); wait while ``maxsize`` jobs are waiting."""
        self.say_pending()
        if self.on_thread:  # a job that queues a job: run it now rather than wait on ourselves
            self._run(job)
            return
        if not self.alive:
            self._start()
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every job submitted so far is done, then issue the warnings they left."""
        if self.alive and not self.on_thread:
            self._queue.join()
        self.say_pending()

    def close(self) -> None:
        """``flush()``, then stop the thread and join it (a later ``submit`` starts a new one)."""
        self.flush()
        thread = self._thread
        if thread is not None and thread.is_alive() and not self.on_thread:
            self._queue.put(_STOP)
            thread.join()
        if not self.on_thread:
            self._thread = None
        self.say_pending()

    def warn(self, message: str) -> None:
        """A warning: issued now on the calling thread, or kept until the next ``submit``/``flush`` when called
        from the worker's thread."""
        if self.on_thread:
            with self._lock:
                self._pending.append(message)
        else:
            rank_zero_warn(message)

    def say_pending(self) -> None:
        """Issue the warnings jobs left (on the calling thread)."""
        if self.on_thread:
            return
        with self._lock:
            pending, self._pending = self._pending, []
        for message in pending:
            rank_zero_warn(message)

    # --- the worker's thread ------------------------------------------------------------------------

    def _start(self) -> None:
        # A thread that died (it never should) is replaced; jobs it left are dropped with the old queue.
        if self._thread is not None and self._queue.unfinished_tasks:
            self._queue = queue.Queue(self.maxsize)
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        # One torch thread here: a second thread running multi-threaded torch ops (the pictures' tensors) slowed the
        # training thread's own multi-threaded ops about 2.5x for as long as it lived (benchmarks/bench_cost.py).
        torch.set_num_threads(1)
        q = self._queue
        while True:
            job = q.get()
            try:
                if job is _STOP:
                    return
                self._run(job)
            finally:
                q.task_done()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            with DRAWING:
                job()
        except Exception as error:  # noqa: BLE001  a job's failure must not end the thread nor the run
            if self.on_error is not None:
                try:
                    self.on_error(error)
                    return
                except Exception as again:  # noqa: BLE001
                    error = again
            kind = type(error).__name__
            if kind not in self._errors_said:
                self._errors_said.add(kind)
                self.warn(f"IntegratedGradientsMonitor: drawing or writing a check failed ({kind}: {error}); "
                          "training goes on, further failures of this kind are not reported")
