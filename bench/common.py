"""Helpers every benchmark shares: machine facts, a Rich table, JSON results, isolated runs.

A benchmark prints a table for people and writes ``bench/results/<name>.json`` for
machines, always with the machine it ran on, since numbers mean little without it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class BenchmarkError(RuntimeError):
    """A benchmark step failed; the message carries the failing command's error output."""


def machine_info() -> dict[str, Any]:
    """Cores, torch threads, Python and library versions, and the load when the run started.

    The load average matters here: the machine is shared, so a busy neighbour slows every
    number, and a reader should be able to tell.
    """
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch"] = torch.__version__
    except ImportError:  # a benchmark without torch still reports the rest
        info["torch_threads"] = None
    for lib in ("numpy", "pandas", "pyarrow"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None
    return info


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux /proc; 0.0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far in MB.

    Reads VmHWM from /proc: Linux carries ru_maxrss over an exec, so a child started by a
    big parent would report the parent's peak; VmHWM belongs to the new address space.
    Falls back to ru_maxrss where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_console() -> Console:
    """A console wide enough for result tables even when output goes to a file or a CI log."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                console: Console | None = None) -> None:
    """Print ``rows`` (dicts) as a Rich table; floats get thousands separators and 2 decimals."""
    console = console or bench_console()
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for col in columns:
        table.add_column(col, no_wrap=True, justify="left" if col in ("format", "name", "model", "what") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` plus machine info and a UTC timestamp to ``results_dir/<name>.json`` atomically."""
    from shopsight.behavior.workspace import write_json_atomic

    path = results_dir / f"{name}.json"
    write_json_atomic(
        path,
        {"benchmark": name, "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "machine": machine_info(), **payload},
    )
    return path


def run_isolated(args: Sequence[str], *, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process and return the JSON object it prints last.

    A fresh process per measurement keeps peak-memory figures separate (ru_maxrss never
    goes down within a process) and stops one run's caches from flattering the next.
    """
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    # stderr passes through, so warnings and profiles from the child reach the console.
    proc = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=cwd or root, env=env)
    if proc.returncode != 0:
        raise BenchmarkError(f"`python {' '.join(args)}` failed with exit code {proc.returncode} (its error is printed above)")
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise BenchmarkError(f"`python {' '.join(args)}` printed no JSON result; stdout was:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])
