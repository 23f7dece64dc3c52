"""Ctrl-C and SIGTERM end a run at an update boundary, with a checkpoint.

A KeyboardInterrupt in the middle of an update used to print a traceback and lose every update
since the last checkpoint. SLURM sends SIGTERM before it kills a preempted or timed-out job
(then SIGKILL after KillWait, 30 s by default), and torchrun forwards SIGTERM to its workers
when it is itself interrupted. The first SIGINT or SIGTERM only raises a flag: the loop
finishes the update, saves a checkpoint there and stops (`Interrupted`). A second SIGINT aborts
at once (a user who means it); a SIGTERM after a SIGINT does not, since torchrun sends exactly
that pair to a worker whose terminal got a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; `exit_code` is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """A signal handler that records the first signal; read by the loop once per update."""

    def __init__(self):
        self.signum: int | None = None
        self._pid = os.getpid()

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the trainer decides, the worker keeps serving it
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, checkpoint or not
        if self.signum is None:
            self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handler for SIGINT and SIGTERM for the block; the previous ones after it.
    Installed before the DataLoader forks, so its workers inherit it (and ignore the signal
    that the terminal sends to the whole process group) instead of dying with a traceback."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield request
        return
    previous = {signum: signal.signal(signum, request.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
