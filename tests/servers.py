"""Servers tests start on 127.0.0.1 and stop afterwards: a free port, and a process run until ready."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def free_port() -> int:
    """A TCP port nothing listens on right now (also a port where a server is surely down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(cmd: list[str], ready: Callable[[], bool], log: Path, *, timeout_s: float, name: str,
            env: dict[str, str] | None = None) -> Iterator[None]:
    """Run ``cmd`` (output to the file ``log``; environment ``env``, default this process's) until ``ready()`` is true; stop it on exit.

    ``ready`` may raise OSError while the server is still starting. The output goes to a file,
    not a pipe: a server that logs a lot while loading would fill a pipe and block.

    Raises:
        RuntimeError: the process exited, or was not ready within ``timeout_s``; with the log's tail.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if ready():
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if proc.poll() is not None else f"was not ready in {timeout_s:.0f} s"
                    raise RuntimeError(f"{name} {state}: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
