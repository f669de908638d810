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

With ``--folder 1000000,3000000,10000000`` it writes, per size, a folder of day-ordered Parquet
files (``--file-events`` each, no session ids, users spread over every file so sessions span
files) and, each in a fresh process: ingests the folder as one batch into an empty workspace,
then appends one more day file (new events plus some already stored) to that full workspace.
Each row shows events/s and the process's peak RSS: with memory bounded by the chunk size,
the peak stays flat as the folder grows.

    python bench/ingest.py --folder 1000000,3000000,10000000
    python bench/ingest.py --folder 10000000 --chunk-rows 100000 --duckdb-memory 256MB   # the bound's two knobs
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


def write_folder(directory: Path, events: int, file_events: int, seed: int) -> tuple[Path, Path]:
    """Write ``events`` canonical events as day-ordered Parquet files of ``file_events`` rows (no session
    ids) in ``directory``/folder, and one more day's file (``directory``/next-day.parquet: 10% new
    events, the rest copies of the last file's) to append after; return both paths.

    Vectorized generation (the shop simulator takes minutes for 10M events): about one event per
    user per hour of activity, ~88 events per user, the mix of a real shop's events.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    folder = directory / "folder"
    folder.mkdir(parents=True)
    users = max(10, events // EVENTS_PER_USER)
    start = pd.Timestamp("2026-01-01", tz="UTC").value
    span_ns = 120 * 86_400 * 10**9
    kinds = np.array(["view", "add_to_cart", "purchase", "search", "login", "remove_from_cart"])
    weights = np.array([0.70, 0.12, 0.05, 0.08, 0.04, 0.01])
    cats = np.array(["Audio", "Phones", "Books", "Garden", "Toys", "Kitchen", "Sports", "Beauty"])

    def frame(n: int, t0: int, t1: int) -> pd.DataFrame:
        ts = np.sort(rng.integers(t0, t1, n))
        uid = rng.integers(0, users, n)
        ev = kinds[rng.choice(len(kinds), n, p=weights)]
        item = rng.integers(0, 20_000, n)
        order = np.where(ev == "purchase", np.char.add("o", rng.integers(0, 10**9, n).astype(str)), None)
        return pd.DataFrame({
            "user_id": pd.array(np.char.add("u", np.char.zfill(uid.astype(str), 7)), dtype="string"),
            "ts": pd.to_datetime(ts, utc=True),
            "event": pd.array(ev, dtype="string"),
            "item_id": pd.array(np.char.add("i", item.astype(str)), dtype="string"),
            "category": pd.array(cats[item % len(cats)], dtype="string"),
            "price": np.round(rng.gamma(2.0, 20.0, n), 2),
            "quantity": np.where(ev == "purchase", rng.integers(1, 4, n), 1),
            "order_id": pd.array(order, dtype="string"),
        })

    files = max(1, math.ceil(events / file_events))
    step = span_ns // files
    for i in range(files):
        n = min(file_events, events - i * file_events)
        frame(n, start + i * step, start + (i + 1) * step).to_parquet(folder / f"day-{i:04d}.parquet", index=False)
    last = pd.read_parquet(folder / f"day-{files - 1:04d}.parquet")
    fresh = frame(max(1, file_events // 10), start + files * step, start + files * step + 86_400 * 10**9)
    nxt = pd.concat([last.sample(n=min(len(last), file_events - len(fresh)), random_state=seed), fresh], ignore_index=True)
    nxt.to_parquet(directory / "next-day.parquet", index=False)
    return folder, directory / "next-day.parquet"


def measure_folder(folder: Path, next_file: Path, workspace: Path, step: str, chunk_rows: int, duckdb_memory: str) -> dict:
    """One step of the folder benchmark in this process: ingest ``folder`` as one batch into the empty
    ``workspace`` (step "folder"), or append ``next_file`` to it (step "append")."""
    import behavior.batches
    from shopsight.behavior.events import IngestLimits
    from shopsight.behavior.ingest import ingest_file
    from shopsight.behavior.workspace import Workspace

    behavior.batches.DUCKDB_MEMORY_LIMIT = duckdb_memory
    ws = Workspace(workspace)
    source = folder if step == "folder" else next_file
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    _, report = ingest_file(ws, source, limits=IngestLimits(max_rows=10**9, max_memory_mb=10**6), return_events=False,
                            chunk_rows=chunk_rows)
    seconds = time.perf_counter() - t0
    read = report.rows_read
    return {"step": step, "rows_read": int(read), "added": int(report.rows_kept), "already_stored": int(report.already_stored),
            "seconds": round(seconds, 2), "events_per_s": round(read / seconds, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


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
    parser.add_argument("--folder", type=str, default="",
                        help="comma-separated folder sizes in events, e.g. 1000000,3000000,10000000: ingest each "
                             "folder of Parquet files as one batch, then append a day to it (peak memory per size)")
    parser.add_argument("--file-events", type=int, default=1_000_000, help="events per Parquet file of a --folder (default 1,000,000)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows read, validated and sessionized at once (default: CHUNK_ROWS)")
    parser.add_argument("--duckdb-memory", default=None, help="DuckDB's memory cap during an ingest (default: behavior.batches' 512MB)")
    parser.add_argument("--folder-worker", nargs=4, help=argparse.SUPPRESS)  # internal: folder, next file, workspace, step
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: measure one file
    parser.add_argument("--append-worker", type=Path, help=argparse.SUPPRESS)  # internal: append a folder's files
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(measure_one(args.worker, profile=args.profile)))
        return 0
    if args.folder_worker is not None or args.folder:
        from shopsight.behavior.batches import DUCKDB_MEMORY_LIMIT
        from shopsight.behavior.events import CHUNK_ROWS

        args.chunk_rows = args.chunk_rows or CHUNK_ROWS
        args.duckdb_memory = args.duckdb_memory or DUCKDB_MEMORY_LIMIT
    if args.folder_worker is not None:
        folder, next_file, workspace, step = args.folder_worker
        print(json.dumps(measure_folder(Path(folder), Path(next_file), Path(workspace), step, args.chunk_rows, args.duckdb_memory)))
        return 0
    if args.folder:
        return folder_main(args)
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


def folder_main(args: argparse.Namespace) -> int:
    """``--folder``: per size, ingest a folder of Parquet files as one batch, then append a day; print and save."""
    console = bench_console()
    sizes = [int(x.replace("_", "")) for x in args.folder.split(",") if x.strip()]
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
            with console.status(f"Writing {size:,} events as Parquet files of {args.file_events:,}…"):
                folder, next_file = write_folder(Path(tmp), size, args.file_events, args.seed)
            folder_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            for step in ("folder", "append"):
                with console.status(f"{size:,} events: {step}…"):
                    result = run_isolated([str(Path(__file__).resolve()), "--folder-worker", str(folder), str(next_file),
                                           str(Path(tmp) / "ws"), step, "--chunk-rows", str(args.chunk_rows),
                                           "--duckdb-memory", args.duckdb_memory])
                rows.append({"events": size, "files": len(list(folder.iterdir())), "folder_mb": round(folder_mb, 1), **result})
    print_table(f"Ingest a folder of Parquet files as one batch, then append a day (chunks of {args.chunk_rows:,} rows, "
                f"DuckDB capped at {args.duckdb_memory})", rows,
                ["events", "files", "folder_mb", "step", "rows_read", "added", "already_stored", "seconds", "events_per_s",
                 "cpu_seconds", "peak_rss_mb"], console=console)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    console.print(f"Load average now {load:.1f} on {os.cpu_count()} cores.")
    path = write_result("ingest_folder", {"sizes": sizes, "file_events": args.file_events, "seed": args.seed,
                                          "chunk_rows": args.chunk_rows, "duckdb_memory": args.duckdb_memory, "results": rows})
    console.print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
