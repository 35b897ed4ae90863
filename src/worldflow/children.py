"""Child processes of the server (the log writer, the processor, the dispatcher): spawned,
awaited, stopped.

A child's target is called as ``target(*args, ready, parent_pid)`` and must send one string on
``ready`` once it is up: empty when all is well, otherwise why it could not start.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
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


def child_stop(parent_pid: int) -> threading.Event:
    """In a child, at its start: an event set by SIGTERM or once the server is gone (SIGINT is
    the server's to handle: it decides when its children stop); logging to stderr."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch_parent() -> None:
        while not stop.wait(1):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return stop
