"""Ingest benchmark: events per second and peak memory for ingesting canonical events from CSV and Parquet.

Generates about ``--events`` synthetic events once, writes them as CSV and as Parquet
*without* session ids (like most public data sets, so sessionization does real work), then
ingests each file through ``behavior.ingest.ingest_file`` (read, validate, sessionize,
atomic Parquet write) in a fresh process per format, so peaks are measured separately.

    python bench/ingest.py --events 1000000
    python bench/ingest.py --events 50000          # a quick check
    python bench/ingest.py --events 1000000 --batches 10   # append: ten day-ordered Parquet files, one batch each

With ``--batches N`` the events are cut by time into N Parquet files in one folder and appended
one after another into one workspace (each a batch), in one fresh process: each append's seconds,
events per second and the process's peak memory so far, so the cost of appending to a growing
workspace shows (each append reads the stored events to find duplicates and continue sessions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (`python bench/ingest.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, peak_rss_mb, print_table, rss_mb, run_isolated, write_result  # noqa: E402

# Events per synthetic user at the default 120 days (measured: 438,653 events / 5,000 users).
EVENTS_PER_USER = 88


def make_inputs(directory: Path, events: int, seed: int) -> dict[str, Path]:
    """Write ``events`` canonical events (no session_id column) as CSV and Parquet; return the paths."""
    from shopsight.behavior.synthetic import generate_shop

    users = max(10, math.ceil(events * 1.05 / EVENTS_PER_USER))
    shop = generate_shop(users=users, seed=seed)
    while len(shop.events) < events:  # a seed with quieter users: simulate more of them
        users = math.ceil(users * 1.3)
        shop = generate_shop(users=users, seed=seed)
    # The cut may split the last user's history; that does not matter for a throughput test.
    frame = shop.events.iloc[:events].drop(columns=["session_id"])
    paths = {"csv": directory / "events.csv", "parquet": directory / "events.parquet"}
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"], index=False)
    return paths


def measure_one(path: Path, profile: bool = False) -> dict:
    """Ingest ``path`` into a temporary workspace; time it and read this process's peak memory."""
    from shopsight.behavior.ingest import ingest_file
    from shopsight.behavior.workspace import Workspace

    before = rss_mb()
    cpu0 = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-ws-") as tmp:
        ws = Workspace(Path(tmp))
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        events, report = ingest_file(ws, path)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        return {
            "rows": int(report.rows_kept),
            "rejected": int(report.rows_rejected),
            "sessions": int(events["session_id"].nunique()),
            "seconds": round(seconds, 3),
            "events_per_s": round(report.rows_kept / seconds, 1),
            # CPU time barely moves when a neighbour loads the machine; wall time does.
            "cpu_seconds": round(cpu, 3),
            "events_per_cpu_s": round(report.rows_kept / max(cpu, 1e-9), 1),
            "rss_before_mb": round(before, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "output_mb": round(sum(f.stat().st_size for f in ws.event_files()) / 2**20, 1),
        }


def make_batches(directory: Path, source: Path, batches: int) -> Path:
    """Cut the Parquet ``source`` by time into ``batches`` files in ``directory``/batches; return that folder."""
    import pandas as pd

    events = pd.read_parquet(source).sort_values("ts", kind="stable").reset_index(drop=True)
    folder = directory / "batches"
    folder.mkdir()
    step = math.ceil(len(events) / batches)
    for i in range(batches):
        events.iloc[i * step:(i + 1) * step].to_parquet(folder / f"part-{i:03d}.parquet", index=False)
    return folder


def measure_appends(folder: Path) -> dict:
    """Append each Parquet file of ``folder`` as one batch into one temporary workspace, timing each."""
    from shopsight.behavior.ingest import ingest_file
    from shopsight.behavior.workspace import Workspace

    steps = []
    with tempfile.TemporaryDirectory(prefix="bench-append-ws-") as tmp:
        ws = Workspace(Path(tmp))
        stored = 0
        for part in sorted(folder.glob("*.parquet")):
            t0 = time.perf_counter()
            _, report = ingest_file(ws, part)
            seconds = time.perf_counter() - t0
            steps.append({"batch": report.batch, "stored_before": stored, "rows": report.rows_kept, "seconds": round(seconds, 3),
                          "events_per_s": round(report.rows_kept / seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1)})
            stored += report.rows_kept
    total = sum(s["seconds"] for s in steps)
    return {"steps": steps, "events": stored, "seconds": round(total, 3), "events_per_s": round(stored / total, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="number of events to ingest (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed")
    parser.add_argument("--profile", action="store_true",
                        help="profile each ingest (cProfile, top 30 by cumulative time, on stderr); slows the run")
    parser.add_argument("--batches", type=int, default=0,
                        help="also append the events as this many day-ordered Parquet files, one batch each")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: measure one file
    parser.add_argument("--append-worker", type=Path, help=argparse.SUPPRESS)  # internal: append a folder's files
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(measure_one(args.worker, profile=args.profile)))
        return 0
    if args.append_worker is not None:
        print(json.dumps(measure_appends(args.append_worker)))
        return 0

    console = bench_console()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        with console.status(f"Generating {args.events:,} synthetic events…"):
            t0 = time.perf_counter()
            paths = make_inputs(Path(tmp), args.events, args.seed)
            generate_s = time.perf_counter() - t0
        for fmt, path in paths.items():
            with console.status(f"Ingesting {fmt} ({path.stat().st_size / 2**20:,.0f} MB)…"):
                worker = [str(Path(__file__).resolve()), "--worker", str(path)] + (["--profile"] if args.profile else [])
                result = run_isolated(worker)
            rows.append({"format": fmt, "file_mb": round(path.stat().st_size / 2**20, 1), **result})
        appends = None
        if args.batches:
            folder = make_batches(Path(tmp), paths["parquet"], args.batches)
            with console.status(f"Appending {args.batches} batches…"):
                appends = run_isolated([str(Path(__file__).resolve()), "--append-worker", str(folder)])
    by = {r["format"]: r for r in rows}
    ratio = round(by["csv"]["seconds"] / by["parquet"]["seconds"], 2)
    print_table(
        f"Ingest {args.events:,} events (read + validate + sessionize + atomic write)",
        rows,
        ["format", "file_mb", "rows", "sessions", "seconds", "events_per_s", "cpu_seconds", "events_per_cpu_s",
         "rss_before_mb", "peak_rss_mb"],
        console=console,
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(f"CSV takes {ratio}x as long as Parquet. Input generated in {generate_s:.1f} s. "
                  f"Load average now {load:.1f} on {os.cpu_count()} cores (wall times stretch under load; CPU times less so).")
    if appends is not None:
        print_table(f"Append {args.events:,} events as {args.batches} batches into one workspace", appends["steps"],
                    ["batch", "stored_before", "rows", "seconds", "events_per_s", "peak_rss_mb"], console=console)
        console.print(f"Appending: {appends['events_per_s']:,.0f} events/s over all batches, peak {appends['peak_rss_mb']:,.0f} MB.")
    path = write_result(
        "ingest",
        {"events": args.events, "seed": args.seed, "generate_seconds": round(generate_s, 2), "results": rows,
         "csv_over_parquet_seconds": ratio, **({"appends": appends} if appends is not None else {})},
    )
    console.print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
