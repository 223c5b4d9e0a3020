"""One engine thread and a bounded FIFO queue in front of it.

The pair can run one generation at a time, so requests take turns in arrival order. The
event loop only ever puts jobs in and reads their events back; llama.cpp runs on the
engine thread alone, so the loop never waits on it. A job's events cross threads through
`loop.call_soon_threadsafe` onto the job's asyncio queue.

Stopping is by flag: the engine reads `should_stop` between rounds, so a client that leaves
(or a server that shuts down) frees the pair within one round, with both KV caches consistent.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

WAITING, RUNNING, DONE = "waiting", "running", "done"


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


class Job:
    """One request's passage through the engine thread. Events: ("start", info), ("text", str),
    ("done", outcome), ("error", exception)."""

    def __init__(self, request: Any, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = WAITING

    def post(self, kind: str, value: Any = None) -> None:
        """From the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    def cancel(self) -> None:
        self.cancelled.set()


# work(request, post, should_stop) -> the outcome; it posts ("start", ...) and ("text", ...) itself.
Work = Callable[[Any, Callable[[str, Any], None], Callable[[], bool]], Any]


class Broker:
    def __init__(self, work: Work, max_waiting: int = 32):
        self.work = work
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running: Job | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="spec-engine", daemon=True)
        self._recent: list[float] = []  # durations of the last jobs, for Retry-After

    def start(self) -> None:
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def submit(self, request: Any) -> Job:
        """Queue a request (on the event loop); QueueFull past the bound, ShuttingDown once closing."""
        if self._closing.is_set():
            raise ShuttingDown()
        job = Job(request, asyncio.get_running_loop())
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise QueueFull(self.retry_after())
            self._waiting += 1
        self._jobs.put(job)
        return job

    def abandon(self, job: Job) -> None:
        """The client has gone: a waiting job leaves the queue's count now, a running one stops at its next round."""
        job.cancel()
        with self._lock:
            if job.state == WAITING:
                job.state = DONE
                self._waiting -= 1

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead times the recent mean job."""
        mean = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1, math.ceil(mean * (self._waiting + 1)))

    def close(self, wait: float | None = None) -> None:
        """Stop taking jobs, stop the running one at its next round, refuse those waiting; then end the thread."""
        if not self._closing.is_set():
            self._closing.set()
            self._jobs.put(None)
        running = self._running
        if running is not None:
            running.cancel()
        if wait is not None and self._thread.is_alive():
            self._thread.join(wait)

    def _should_stop(self, job: Job) -> bool:
        return job.cancelled.is_set() or self._closing.is_set()

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                if job.state != WAITING:
                    continue  # abandoned while it waited
                self._waiting -= 1
                job.state = RUNNING
                self._running = job
            try:
                if self._closing.is_set():
                    job.post("error", ShuttingDown())
                    continue
                t0 = time.perf_counter()
                try:
                    outcome = self.work(job.request, job.post, partial(self._should_stop, job))
                except Exception as e:  # noqa: BLE001  (answered as an error object; the thread goes on)
                    job.post("error", e)
                else:
                    job.post("done", outcome)
                self._recent = (self._recent + [time.perf_counter() - t0])[-16:]
            finally:
                with self._lock:
                    job.state = DONE
                    self._running = None
        # Jobs still queued after the sentinel: answer them so no request hangs.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.state == WAITING:
                job.post("error", ShuttingDown())
