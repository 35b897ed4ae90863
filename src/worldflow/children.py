"""Child processes of the server (the log writer, the processor): spawned, awaited, stopped.

A child's target is called as ``target(*args, ready, parent_pid)`` and must send one string on
``ready`` once it is up: empty when all is well, otherwise why it could not start.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any


def spawn_child(target: Callable[..., None], args: tuple[Any, ...], name: str,
                timeout: float = 60) -> Any:  # fmt: skip
    """Start the child and wait until it reports ready; raise RuntimeError naming ``name`` if
    it does not in time or reports an error."""
    context = multiprocessing.get_context("spawn")
    ready_recv, ready_send = context.Pipe(duplex=False)
    process = context.Process(
        target=target, args=(*args, ready_send, os.getpid()), name=f"worldflow-{name}",
        daemon=False,
    )  # fmt: skip
    process.start()
    ready_send.close()
    if not ready_recv.poll(timeout):
        stop_child(process)
        raise RuntimeError(f"the {name} did not start in time")
    try:
        error = ready_recv.recv()
    except EOFError:
        error = f"the {name} exited with code {process.exitcode}"
    if error:
        stop_child(process)
        raise RuntimeError(f"the {name} could not start: {error}")
    return process


def stop_child(process: Any, timeout: float = 60) -> None:
    """SIGTERM (the child finishes and commits what it holds), then SIGKILL after ``timeout``."""
    if process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
