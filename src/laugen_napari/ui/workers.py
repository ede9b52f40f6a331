"""Background work for the docks on plain Python threads, results delivered on the GUI thread.

The threads are reused (an idle one takes the next job), so starting a job never waits on the GUI
thread for a new thread to start (tens of ms on busy cores). Why not napari's ``thread_worker``:
it runs on Qt's global QThreadPool, which Qt itself uses for image conversion while painting.
Under a software OpenGL (Mesa/Xvfb) a repaint on the GUI thread, holding the GIL, waited for a
pool thread while every pool thread was a Python worker waiting for the GIL: a deadlock seen here.
Our own threads never take a pool slot.

Long jobs still show in napari's activity dock: :func:`activity` makes a ``napari.utils.progress``
bar that the docks create, advance and close on the GUI thread only (from their timers and
queued signals), so no Qt thread-pool worker is involved.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from qtpy.QtCore import QObject, Qt, Signal

from ..core.preview import BACKGROUND_THREADS


class _Relay(QObject):
    returned = Signal(object)
    errored = Signal(object)
    finished = Signal()


class ThreadWorker:
    """Runs ``fn(*args, **kwargs)`` on a daemon thread; callbacks run on the GUI thread.

    Keep a reference until ``finished`` (the docks keep them in a set).
    """

    def __init__(self, fn: Callable[..., Any], *args, **kwargs):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._relay = _Relay()
        self.returned = self._relay.returned
        self.errored = self._relay.errored
        self.finished = self._relay.finished
        self._running = threading.Event()

    def start(self) -> "ThreadWorker":
        """Hand the job to an idle background thread, or to a new one
        (:data:`~laugen_napari.core.preview.BACKGROUND_THREADS`)."""
        self._running.set()
        BACKGROUND_THREADS.submit(self._work)
        return self

    @property
    def is_running(self) -> bool:
        return self._running.is_set()

    def _work(self) -> None:
        thread = threading.current_thread()
        name, thread.name = thread.name, f"laugen-{getattr(self._fn, '__name__', 'work')}"
        try:
            result = self._fn(*self._args, **self._kwargs)
        except Exception as exc:  # delivered to the GUI as a notification
            self._relay.errored.emit(exc)
        else:
            self._relay.returned.emit(result)
        finally:
            self._fn = self._args = self._kwargs = result = None  # the job's inputs and result go with it
            thread.name = name
            self._running.clear()
            self._relay.finished.emit()


def run_in_thread(fn: Callable[..., Any], *args, returned: Callable | None = None, errored: Callable | None = None,
                  finished: Callable | None = None, **kwargs) -> ThreadWorker:
    """Start ``fn`` on a thread and connect the callbacks (queued onto the GUI thread)."""
    worker = ThreadWorker(fn, *args, **kwargs)
    conn = Qt.ConnectionType.QueuedConnection
    if returned is not None:
        worker.returned.connect(returned, conn)
    if errored is not None:
        worker.errored.connect(errored, conn)
    if finished is not None:
        worker.finished.connect(finished, conn)
    return worker.start()


class WorkerSet:
    """The worker threads of one dock: started with :meth:`run`, referenced until they finish.

    Args:
        error_prefix: prefix of the napari error notification shown for a worker's exception
            when the caller passes no ``errored`` callback.
    """

    def __init__(self, error_prefix: str = "LAUGEN"):
        self.error_prefix = error_prefix
        self._running: set[ThreadWorker] = set()

    def run(self, fn: Callable[..., Any], *args, returned: Callable | None = None, errored: Callable | None = None,
            finished: Callable | None = None, **kwargs) -> ThreadWorker:
        """Start ``fn(*args, **kwargs)``; callbacks run on the GUI thread."""
        holder: dict[str, ThreadWorker] = {}

        def done() -> None:
            self._running.discard(holder.get("worker"))
            if finished is not None:
                finished()

        if errored is None:
            from napari.utils.notifications import show_error

            def errored(exc: Exception) -> None:
                show_error(f"{self.error_prefix}: {exc}")

        worker = run_in_thread(fn, *args, returned=returned, errored=errored, finished=done, **kwargs)
        holder["worker"] = worker
        self._running.add(worker)
        return worker

    def __bool__(self) -> bool:
        return bool(self._running)

    def wait_idle(self, timeout_ms: int = 30000) -> None:
        """Process Qt events until every worker has finished (for shutdown and tests)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer, QThread

        timer = QElapsedTimer()
        timer.start()
        while self._running and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            QThread.msleep(5)


def activity(total: int | None, desc: str):
    """A progress bar in napari's activity dock (``napari.utils.progress``), or None without napari.

    Create, ``update`` and ``close`` it on the GUI thread; ``total`` 0 or None shows a busy bar."""
    try:
        from napari.utils import progress
    except ImportError:  # pragma: no cover - napari is a dependency
        return None
    return progress(total=total, desc=desc)
