"""Run a training in a separate process (``multiprocessing`` "spawn" context) and follow it.

The GUI stays responsive because torch and the GIL live in the child. The child builds the task
itself from a picklable ``factory`` (a module-level function) and its keyword arguments::

    def make(**kw) -> tuple[TrainTask, batches, dict]:   # dict: run_training keyword arguments
        ...

    proc = TrainingProcess(make, {"size": 32}).start()
    while proc.running:
        for rec in proc.poll():      # non-blocking; Records in order
            ...
    proc.stop()                     # sets the stop event: last.pt is written, the child exits

Messages on the queue are ``("record", Record)``, then exactly one of ``("done", None)`` or
``("error", "one-line message")``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import traceback
from typing import Any, Callable

from .loop import Record, run_training


def _child(factory: Callable[..., tuple], kwargs: dict, q: Any, stop: Any, threads: int) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, int(threads)))
    try:
        task, batches, run_kwargs = factory(**kwargs)
        for rec in run_training(task, batches, stop=stop, **run_kwargs):
            q.put(("record", rec))
        q.put(("done", None))
    except KeyboardInterrupt:
        q.put(("error", "interrupted"))
    except Exception as exc:  # reported to the parent as one line; the traceback goes to stderr
        traceback.print_exc()
        q.put(("error", f"{type(exc).__name__}: {exc}"))


class TrainingProcess:
    """A training run in a child process; see the module docstring.

    Args:
        factory: module-level callable ``factory(**kwargs) -> (task, batches, run_kwargs)``.
        kwargs: its picklable keyword arguments.
        threads: torch threads in the child.
    """

    def __init__(self, factory: Callable[..., tuple], kwargs: dict | None = None, threads: int = 1):
        self._ctx = mp.get_context("spawn")
        self._queue = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._proc = self._ctx.Process(target=_child, args=(factory, dict(kwargs or {}), self._queue, self._stop, threads),
                                       daemon=True)
        self.records: list[Record] = []
        self.finished = False
        self.error: str | None = None

    def start(self) -> "TrainingProcess":
        self._proc.start()
        return self

    @property
    def running(self) -> bool:
        """True until the child has reported its end (or died)."""
        if self.finished:
            return False
        if not self._proc.is_alive() and self._proc.exitcode is not None:
            self.poll()
            if not self.finished:
                self.finished = True
                self.error = self.error or f"training process died (exit code {self._proc.exitcode})"
        return not self.finished

    def poll(self, max_items: int = 10_000) -> list[Record]:
        """New records since the last call (non-blocking)."""
        new: list[Record] = []
        for _ in range(max_items):
            try:
                kind, payload = self._queue.get_nowait()
            except queue_mod.Empty:
                break
            if kind == "record":
                new.append(payload)
            else:
                self.finished = True
                if kind == "error":
                    self.error = payload
        self.records.extend(new)
        return new

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the child to stop after its current step (it writes last.pt) and wait for it."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child, draining the queue meanwhile (a full queue would block it)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._proc.is_alive():
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self._proc.terminate()
                self._proc.join(5)
                self.error = self.error or "training process did not stop in time and was terminated"
                break
            self._proc.join(0.05)
        self.poll()
        self.finished = True

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    @property
    def pid(self) -> int | None:
        """The child process id (None before start)."""
        return self._proc.pid
