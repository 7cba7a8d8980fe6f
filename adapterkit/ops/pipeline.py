"""Threads for streaming jobs: a reader ahead of the computation, a writer behind it.

A :class:`Pipeline` runs worker threads joined by bounded :class:`Channel` queues, so that
reading, computing and writing overlap while at most a few blocks are in flight (the queues'
sizes bound the memory).  The first error in any thread stops every thread, and the caller's
next channel operation raises that same exception (an ``AdapterkitError`` stays one);
:meth:`Pipeline.close` stops and joins the threads, and is safe to call on any exit path.
torch and the file system calls release the GIL, so the threads run truly in parallel.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_POLL = 0.05  # seconds a blocked put/get waits before it looks whether the pipeline stopped


class Stopped(Exception):
    """Raised in a worker whose pipeline was stopped by the caller (not an error)."""


class Pipeline:
    """Worker threads sharing a stop flag and the first error any of them raised."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        """Run ``target(*args)`` in a daemon thread; an exception it raises stops the pipeline."""
        def run() -> None:
            try:
                target(*args)
            except Stopped:
                pass
            except BaseException as exc:  # handed to the caller, who re-raises it
                self.fail(exc)
        thread = threading.Thread(target=run, name=f"adapterkit-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop.set()

    def channel(self, maxsize: int) -> Channel:
        return Channel(self, maxsize)

    def check(self) -> None:
        """Raise the first worker error, or :class:`Stopped` when the pipeline was stopped."""
        if self._stop.is_set():
            if self._error is not None:
                raise self._error
            raise Stopped()

    def join(self) -> None:
        """Wait for every thread to end (they must be finishing: inputs closed), then raise the
        first error any of them met."""
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop every thread and wait for them (idempotent)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()


class Channel:
    """A bounded FIFO between threads whose blocking calls give up once the pipeline stops."""

    def __init__(self, pipeline: Pipeline, maxsize: int) -> None:
        self._pipeline = pipeline
        self._queue: queue.Queue = queue.Queue(maxsize)

    def put(self, item: Any) -> None:
        while True:
            self._pipeline.check()
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                pass

    def get(self) -> Any:
        while True:
            self._pipeline.check()
            try:
                return self._queue.get(timeout=_POLL)
            except queue.Empty:
                self._pipeline.check()
