"""The probe grid's forked CPU workers: each trains a share of the grid's groups with one
thread and sends its results back pickled through a pipe (probe_grid.train_grid). A group step
is a dozen ops of 20-300 us, which two threads of one process split poorly; processes of one
thread each do not.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import signal
import sys
from collections.abc import Callable

import torch

from musicssl.evaluate.probe_protocol import ProbeConfig, RunResult


def grid_workers(config: ProbeConfig, device: torch.device) -> int:
    """On the CPU: config.workers, or by default under Linux one process per torch thread, each
    of one thread (a group step is a dozen ops of 20-300 us: two processes trained the small grid
    of probe_grid_speed.py in 1.7 s where one process of two threads took 2.2 s, AMD EPYC).
    On an accelerator 1 (a CUDA context does not survive a fork)."""
    if device.type != "cpu":
        return 1
    if config.workers is not None:
        return config.workers
    if sys.platform != "linux":
        return 1
    return max(1, torch.get_num_threads())


def in_forked_workers(count: int, work: Callable[[int], object]) -> list:
    """[work(0), ..., work(count - 1)], each in a child process forked from this one (os.fork:
    the data is shared, not copied, and a daemonic caller such as a Pool worker may fork too),
    running torch with one thread (a forked child must not start OpenMP threads of its own: GNU
    libgomp is not fork-safe). Each result comes back pickled through a pipe from our own child.
    An exception in a child is raised here, with a note naming the worker."""
    children: list[tuple[int, int]] = []
    try:
        for index in range(count):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(read_end)
                _worker(work, index, write_end)
            os.close(write_end)
            children.append((pid, read_end))
        outputs, failure = [], None
        for index, (pid, read_end) in enumerate(children):
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            children[index] = (pid, -1)  # its pipe is closed
            _, status = os.waitpid(pid, 0)
            children[index] = (0, -1)  # collected
            ok, value = _WorkerResult(io.BytesIO(data)).load() if data else (
                False, RuntimeError(f"probe grid worker {index} died (wait status {status})"))
            if not ok and failure is None:
                failure = value
            outputs.append(value)
    finally:  # an interrupt here: no child outlives its parent's wait
        for pid, read_end in children:
            if pid:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            if read_end >= 0:
                os.close(read_end)
    if failure is not None:
        raise failure
    return outputs


class _WorkerResult(pickle.Unpickler):
    """What a grid worker sends back and nothing else: run results (dicts, lists, numbers,
    strings), numpy scalars, builtin exceptions. Anything else is refused, not imported."""
    ALLOWED = {(RunResult.__module__, "RunResult"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        value = getattr(builtins, name, None) if module == "builtins" else None
        if (module, name) in self.ALLOWED or (isinstance(value, type) and issubclass(value, BaseException)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a probe grid worker sent {module}.{name}, which is not a result")


def _worker(work: Callable[[int], object], index: int, write_end: int) -> None:
    """A forked child's whole life: the work, its pickled result (or exception), exit."""
    try:
        torch.set_num_threads(1)
        payload = pickle.dumps((True, work(index)))
    except BaseException as error:  # noqa: BLE001 (handed to the parent, which raises it)
        # as the nearest builtin exception class (what _WorkerResult admits), so that callers
        # catching e.g. ValueError still catch it
        kind = next(cls for cls in type(error).__mro__ if cls.__module__ == "builtins")
        sent = error if kind is type(error) else kind(f"{type(error).__name__}: {error}")
        sent.add_note(f"(in probe grid worker {index} of a forked grid)")
        try:
            payload = pickle.dumps((False, sent))
        except Exception:  # an exception whose arguments do not pickle: its text
            payload = pickle.dumps((False, RuntimeError(f"probe grid worker {index}: {error!r}")))
    try:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)  # no atexit handlers, no buffers of the parent's flushed twice
