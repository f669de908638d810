"""Analytic query benchmark: the DuckDB metric engine beside the same computation in pandas, in one process.

For each kind of question an analyst asks (the questions of issue 17) it times
``QueryEngine.run(spec)`` — validation, compilation, DuckDB, rows, citations — and a pandas
function computing the same numbers from the same derived tables (sessions, session ×
category, purchase lines; built once per engine and timed apart as "build"), checks that the
two agree, and reports p50/p95 per kind (wall time, and CPU time, which a busy neighbour on the
shared cores inflates less; DuckDB's CPU time adds up its threads) and the peak memory of each phase.

Two workspaces:

- the demo shop (``python cli.py demo --no-index --no-ask --workspace /tmp/q-demo``: 5,000 users,
  ~440k events, trained models);
- a ~10M-event shop made by replicating the demo's events ``--copies`` times with prefixed
  user, session and order ids (``r07-u00042``), and the score tables likewise. Replicas keep
  every distribution (so every rate equals the demo's, a check in itself) and multiply
  volume; simulating 115k users with the generator would take far longer for the same test.

    python bench/query.py                                    # /tmp/q-demo and /tmp/q-10m
    python bench/query.py --demo ~/shop --big /data/q-10m --copies 23 --reps 30

Targets (2 shared cores): p50 <= 50 ms per kind on the demo, <= 1 s at 10M events. Prints a
table and writes ``bench/results/query.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

# Run as a script (`python bench/query.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, print_table, rss_mb, write_result  # noqa: E402

DEMO_TARGET_MS = 50.0
BIG_TARGET_MS = 1000.0
STEPS = {"view": "view", "cart": "add_to_cart", "checkout": "checkout", "purchase": "purchase", "refund": "refund"}


# --- a ~10M-event workspace from the demo -----------------------------------------------------------
def replicate_workspace(src: Path, dst: Path, copies: int) -> int:
    """Write ``copies`` replicas of ``src``'s events and score tables into ``dst``; returns the event count.

    Ids get a replica prefix (``r07-``), so replicas are distinct users with the demo's behaviour
    and dates. DuckDB streams the copy, so it needs far less memory than the result.
    """
    import duckdb

    from shopsight.behavior.models.registry import SCORES, latest_version
    from shopsight.behavior.workspace import Workspace

    s, d = Workspace(src), Workspace(dst)
    d.root.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    prefix = "'r' || lpad(CAST(k AS VARCHAR), 2, '0') || '-'"
    cols = [c for c in con.execute("SELECT * FROM read_parquet($p) LIMIT 0", {"p": str(s.events_path)}).description]
    names = [c[0] for c in cols]
    select = ", ".join(f"{prefix} || {n} AS {n}" if n in ("user_id", "session_id", "order_id") else n for n in names)
    tmp = d.events_path.with_suffix(".tmp.parquet")
    con.execute(
        f"COPY (SELECT {select} FROM read_parquet($p), range($k) r(k) ORDER BY k, user_id, ts) TO '{tmp}' (FORMAT parquet)",
        {"p": str(s.events_path), "k": copies},
    )
    tmp.replace(d.events_path)
    for name in ("churn", "risk", "intent"):
        version = latest_version(s, name)
        if version is None or not (s.models_dir / name / version / SCORES).exists():
            continue
        out = d.models_dir / name / version
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.models_dir / name / version / "card.json", out / "card.json")
        con.execute(
            f"COPY (SELECT {prefix} || user_id AS user_id, * EXCLUDE (user_id) FROM read_parquet($p), range($k) r(k)) "
            f"TO '{out / SCORES}' (FORMAT parquet)",
            {"p": str(s.models_dir / name / version / SCORES), "k": copies},
        )
    n = con.execute("SELECT count(*) FROM read_parquet($p)", {"p": str(d.events_path)}).fetchone()[0]
    con.close()
    return int(n)


# --- the questions, as specs and as pandas ------------------------------------------------------------
class PandasTables:
    """The engine's derived tables rebuilt in pandas: sessions, session × category, purchase lines, first seen."""

    def __init__(self, ws: Any) -> None:
        from shopsight.behavior.models.registry import load_scores

        cols = ["user_id", "ts", "event", "category", "price", "quantity", "session_id", "device", "country", "payment", "order_id"]
        ev = ws.load_events(columns=cols)
        ev["ts"] = ev["ts"].dt.tz_convert("UTC").dt.tz_localize(None)
        flags = pd.DataFrame({s: ev["event"].eq(e) for s, e in STEPS.items()})
        flags["session_id"] = ev["session_id"]
        steps = flags.groupby("session_id", sort=False).any()
        attrs = ev.groupby("session_id", sort=False).agg(
            user_id=("user_id", "first"), start=("ts", "min"), device=("device", "first"), country=("country", "first")
        )
        self.sessions = attrs.join(steps).reset_index()
        item = ev["category"].notna()
        per_cat = flags.loc[item, ["view", "cart", "purchase", "refund"]].assign(
            session_id=ev.loc[item, "session_id"], category=ev.loc[item, "category"]
        ).groupby(["session_id", "category"], sort=False).any().reset_index()
        self.scats = per_cat.merge(self.sessions[["session_id", "user_id", "start", "device", "country", "checkout"]], on="session_id")
        buys = ev[ev["event"] == "purchase"]
        lines = pd.DataFrame({
            "order_key": buys["order_id"].fillna(buys["session_id"]),
            "session_id": buys["session_id"],
            "category": buys["category"],
            "method": buys["payment"].str.replace(r"_\d{4}$", "", regex=True),
            "amount": buys["price"].fillna(0) * buys["quantity"],
        })
        self.lines = lines.merge(self.sessions[["session_id", "user_id", "start", "device", "country"]], on="session_id")
        refunds = ev[ev["event"] == "refund"]
        self.refunded = set(refunds["order_id"].fillna(refunds["session_id"]))
        self.first_ts = self.sessions.groupby("user_id")["start"].min()
        self.scores = {m: load_scores(ws, m).set_index("user_id")["probability"] for m in ("churn", "risk")}
        del ev, flags


def _week(ts: pd.Series) -> pd.Series:
    return (ts.dt.normalize() - pd.to_timedelta(ts.dt.day_of_week, unit="D")).dt.strftime("%Y-%m-%d")


def questions(last_day: pd.Timestamp) -> list[tuple[str, dict[str, Any], Callable[[PandasTables], Any], Callable[[Any], Any]]]:
    """(kind, engine spec, pandas computation, the engine result's comparable number) per kind of question."""
    month_lo = (last_day - pd.DateOffset(months=1)).replace(day=1).normalize()
    month_hi = month_lo + pd.DateOffset(months=1)
    two_lo = (last_day - pd.DateOffset(months=2)).normalize() + pd.Timedelta(days=1)
    day = lambda ts: ts.strftime("%Y-%m-%d")  # noqa: E731
    cmp_lo = (last_day - pd.Timedelta(days=27)).normalize()
    cmp_prev = cmp_lo - pd.Timedelta(days=28)
    end = last_day.normalize() + pd.Timedelta(days=1)

    def cart_rate(t: PandasTables) -> float:
        s = t.sessions
        return float((s["cart"] & s["purchase"]).sum() / s["cart"].sum())

    def buyers(t: PandasTables) -> int:
        s = t.sessions
        return int(s.loc[(s["start"] >= month_lo) & (s["start"] < month_hi) & s["purchase"], "user_id"].nunique())

    def carted_not_checked_out(t: PandasTables) -> tuple[int, list[str]]:
        u = t.sessions.groupby("user_id")[["cart", "checkout"]].any()
        ids = sorted(u.index[u["cart"] & ~u["checkout"]])
        return len(ids), ids[:20]

    def abandonment_by_category(t: PandasTables) -> tuple[str, float]:
        c = t.scats[t.scats["cart"]]
        rate = (~c["purchase"]).groupby(c["category"]).mean()
        return str(rate.idxmax()), float(rate.max())

    def risky_by_payment(t: PandasTables) -> dict[str, int]:
        risk = t.scores["risk"]
        users = set(t.sessions["user_id"]) & set(risk.index[risk >= 0.5])
        paid = t.lines[t.lines["user_id"].isin(users)]
        return {str(k): int(v) for k, v in paid.groupby("method")["user_id"].nunique().items()}

    def weekly_conversion(t: PandasTables) -> dict[str, float]:
        s = t.sessions
        s = s[(s["start"] >= two_lo) & (s["start"] < end)]
        return {k: float(v) for k, v in s.groupby(_week(s["start"]))["purchase"].mean().items()}

    def fraud_above(t: PandasTables) -> int:
        p = t.scores["risk"].reindex(t.sessions["user_id"].unique())
        return int((p >= 0.8).sum())

    def churner_aov(t: PandasTables) -> float:
        churn = t.scores["churn"]
        lines = t.lines[t.lines["user_id"].isin(churn.index[churn >= 0.5])]
        return float(lines["amount"].sum() / lines["order_key"].nunique())

    def monthly_retention(t: PandasTables) -> dict[tuple[str, int], int]:
        first = t.first_ts
        s = t.sessions[["user_id", "start"]].drop_duplicates()
        c = s["user_id"].map(first)
        k = (s["start"].dt.year - c.dt.year) * 12 + s["start"].dt.month - c.dt.month
        cells = pd.DataFrame({"c": c.dt.strftime("%Y-%m"), "k": k, "u": s["user_id"]}).drop_duplicates()
        return {(str(a), int(b)): int(v) for (a, b), v in cells.groupby(["c", "k"])["u"].nunique().items()}

    def funnel_by_device(t: PandasTables) -> dict[str, list[int]]:
        s = t.sessions
        v, c = s["view"], s["view"] & s["cart"]
        k, p = c & s["checkout"], c & s["checkout"] & s["purchase"]
        steps = pd.DataFrame({"v": v, "c": c, "k": k, "p": p}).groupby(s["device"]).sum()
        return {str(d): [int(x) for x in row] for d, row in steps.iterrows()}

    def revenue_vs_previous(t: PandasTables) -> dict[str, tuple[float, float]]:
        lines = t.lines
        cur = lines[(lines["start"] >= cmp_lo) & (lines["start"] < end)].groupby("category")["amount"].sum()
        prev = lines[(lines["start"] >= cmp_prev) & (lines["start"] < cmp_lo)].groupby("category")["amount"].sum()
        return {str(k): (round(float(v), 2), round(float(prev.get(k, 0.0)), 2)) for k, v in cur.items()}

    def refund_by_payment(t: PandasTables) -> dict[str, float]:
        orders = t.lines.groupby(["method", "order_key"]).size().reset_index()[["method", "order_key"]]
        orders["refunded"] = orders["order_key"].isin(t.refunded)
        return {str(k): float(v) for k, v in orders.groupby("method")["refunded"].mean().items()}

    rows = lambda r: r.rows  # noqa: E731
    return [
        ("cart → purchase rate, overall", {"metric": "cart_to_purchase"}, cart_rate, lambda r: r.total.value),
        ("users who bought last month", {"metric": "users", "purchased": True, "since": day(month_lo), "until": day(month_hi - pd.Timedelta(days=1))},
         buyers, lambda r: r.total.value),
        ("carted, never checked out (count + list)", {"metric": "users", "did": ["cart"], "did_not": ["checkout"], "examples": 20},
         carted_not_checked_out, lambda r: (r.total.value, r.total.examples)),
        ("cart abandonment by category", {"metric": "cart_abandonment", "group_by": "category", "limit": 1},
         abandonment_by_category, lambda r: (r.rows[0].group, r.rows[0].value)),
        ("risk ≥ 0.5 users by payment", {"metric": "users", "group_by": "payment", "scores": [{"model": "risk", "min": 0.5}], "limit": 20},
         risky_by_payment, lambda r: {x.group: x.value for x in rows(r) if x.group is not None}),
        ("weekly conversion, last two months", {"metric": "session_conversion", "group_by": "week", "since": day(two_lo), "until": day(last_day), "limit": 20},
         weekly_conversion, lambda r: {x.group: x.value for x in rows(r)}),
        ("users with fraud score ≥ 0.8", {"metric": "score_count_above", "model": "risk", "threshold": 0.8}, fraud_above, lambda r: r.total.value),
        ("AOV of churn ≥ 0.5 users", {"metric": "avg_order_value", "scores": [{"model": "churn", "min": 0.5}]}, churner_aov, lambda r: r.total.value),
        ("monthly cohort retention", {"metric": "retention", "group_by": "cohort_month", "limit": 20}, monthly_retention,
         lambda r: {(x.group, c.period): c.active for x in rows(r) for c in x.periods if c.active}),
        ("funnel by device", {"metric": "funnel", "group_by": "device"}, funnel_by_device,
         lambda r: {x.group: [s.sessions for s in x.steps] for x in rows(r)}),
        ("revenue by category vs previous 28 days", {"metric": "revenue", "group_by": "category", "since": day(cmp_lo), "until": day(last_day), "compare": True, "limit": 20},
         revenue_vs_previous, lambda r: {x.group: (x.value, x.previous.value) for x in rows(r)}),
        ("refund rate by payment", {"metric": "refund_rate", "group_by": "payment", "limit": 20}, refund_by_payment,
         lambda r: {x.group: x.value for x in rows(r)}),
    ]


def agree(a: Any, b: Any) -> bool:
    """Equal up to the engine's rounding (6 decimals for rates, cents for money)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(agree(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return abs(float(a) - float(b)) <= 0.006 + 1e-6 * abs(float(b))
    return a == b


# --- measuring ---------------------------------------------------------------------------------------
class PeakRss:
    """Peak resident memory while the block runs, sampled every 5 ms (ru_maxrss never goes down)."""

    def __enter__(self) -> "PeakRss":
        self.start = rss_mb()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def pct(ms: list[float]) -> tuple[float, float]:
    return round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 95)), 2)


def bench_workspace(label: str, path: Path, reps: int, pandas_reps: int) -> dict[str, Any]:
    """Time every kind of question with the engine and with pandas on one workspace."""
    from shopsight.behavior.query import QueryEngine
    from shopsight.behavior.workspace import Workspace

    console = bench_console()
    ws = Workspace(path)
    engine = QueryEngine(ws)
    with PeakRss() as duck_mem:
        t = time.perf_counter()
        engine.describe()  # builds the session tables
        duck_build = time.perf_counter() - t
        last = pd.Timestamp(engine.describe()["data_last"])
        kinds = questions(last)
        duck: dict[str, list[float]] = {}
        duck_cpu: dict[str, list[float]] = {}
        answers: dict[str, Any] = {}
        for kind, spec, _, read in kinds:
            engine.run(spec)  # warm: the first read of a score table
            samples, cpu = [], []
            for _ in range(reps):
                t, c = time.perf_counter(), time.process_time()
                result = engine.run(spec)
                samples.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            duck[kind], duck_cpu[kind], answers[kind] = samples, cpu, read(result)
        cur = engine._connection().cursor()
        duck_buffers = cur.execute("SELECT sum(memory_usage_bytes) / 2^20 FROM duckdb_memory()").fetchone()[0]
        cur.close()
    console.print(f"{label}: DuckDB built its tables in {duck_build:.2f} s; timing pandas …")
    with PeakRss() as pandas_mem:
        t = time.perf_counter()
        tables = PandasTables(ws)
        pandas_build = time.perf_counter() - t
        pd_times: dict[str, list[float]] = {}
        pd_cpu: dict[str, list[float]] = {}
        same: dict[str, bool] = {}
        for kind, _, compute, _ in kinds:
            samples, cpu = [], []
            for _ in range(pandas_reps):
                t, c = time.perf_counter(), time.process_time()
                value = compute(tables)
                samples.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            pd_times[kind], pd_cpu[kind], same[kind] = samples, cpu, agree(answers[kind], value)
    n_events = int(engine._connection().cursor().execute("SELECT count(*) FROM read_parquet($p)", {"p": [str(f) for f in ws.event_files()]}).fetchone()[0])
    engine.close()
    rows = []
    for kind, *_ in kinds:
        d50, d95 = pct(duck[kind])
        p50, p95 = pct(pd_times[kind])
        rows.append({"what": kind, "duckdb_p50_ms": d50, "duckdb_p95_ms": d95, "duckdb_cpu_p50_ms": pct(duck_cpu[kind])[0],
                     "pandas_p50_ms": p50, "pandas_p95_ms": p95, "pandas_cpu_p50_ms": pct(pd_cpu[kind])[0],
                     "pandas_over_duckdb": round(p50 / d50, 2) if d50 else None, "agree": same[kind]})
    return {
        "workspace": str(path),
        "events": n_events,
        "reps": {"duckdb": reps, "pandas": pandas_reps},
        "build_s": {"duckdb": round(duck_build, 2), "pandas": round(pandas_build, 2)},
        "peak_rss_mb": {"duckdb_phase": round(duck_mem.peak, 1), "duckdb_phase_growth": round(duck_mem.peak - duck_mem.start, 1),
                        "duckdb_buffers": round(float(duck_buffers or 0), 1),
                        "pandas_phase": round(pandas_mem.peak, 1), "pandas_phase_growth": round(pandas_mem.peak - pandas_mem.start, 1)},
        "kinds": rows,
        "duckdb_p50_max_ms": max(r["duckdb_p50_ms"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="/tmp/q-demo", help="the demo workspace (`python cli.py demo --no-index --no-ask --workspace DIR`)")
    parser.add_argument("--big", default="/tmp/q-10m", help="the ~10M-event workspace; made from --demo if it has no events")
    parser.add_argument("--copies", type=int, default=23, help="replicas of the demo in --big (23 × 440k ≈ 10M events)")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per kind on the demo (a third of them at 10M)")
    parser.add_argument("--pandas-reps", type=int, default=10, help="timed pandas runs per kind on the demo (3 at 10M)")
    parser.add_argument("--name", default="query", help="results file name under bench/results/")
    args = parser.parse_args(argv)
    import shopsight.behavior.models.registry  # noqa: F401  (imports torch once, outside every timing)

    console = bench_console()
    demo, big = Path(args.demo).expanduser(), Path(args.big).expanduser()
    if not (demo / "events.parquet").exists():
        console.print(f"[red]no demo workspace at {demo}: run `python cli.py demo --no-index --no-ask --workspace {demo}`[/red]")
        return 2
    if not (big / "events.parquet").exists():
        t = time.perf_counter()
        n = replicate_workspace(demo, big, args.copies)
        console.print(f"made {big}: {n:,} events ({args.copies} replicas of the demo) in {time.perf_counter() - t:.1f} s")
    results = {
        "demo": bench_workspace("demo", demo, args.reps, args.pandas_reps),
        "big": bench_workspace("10M", big, max(args.reps // 3, 5), max(args.pandas_reps // 3, 3)),
    }
    cols = ["what", "duckdb_p50_ms", "duckdb_p95_ms", "duckdb_cpu_p50_ms", "pandas_p50_ms", "pandas_p95_ms", "pandas_cpu_p50_ms",
            "pandas_over_duckdb", "agree"]
    for key, target in (("demo", DEMO_TARGET_MS), ("big", BIG_TARGET_MS)):
        r = results[key]
        r["target_p50_ms"] = target
        r["meets_target"] = r["duckdb_p50_max_ms"] <= target
        print_table(
            f"{key}: {r['events']:,} events — build DuckDB {r['build_s']['duckdb']} s / pandas {r['build_s']['pandas']} s; "
            f"peak RSS DuckDB phase {r['peak_rss_mb']['duckdb_phase']} MB (+{r['peak_rss_mb']['duckdb_phase_growth']}), "
            f"pandas phase {r['peak_rss_mb']['pandas_phase']} MB (+{r['peak_rss_mb']['pandas_phase_growth']})",
            r["kinds"], cols, console=console,
        )
        console.print(f"{key}: slowest DuckDB p50 {r['duckdb_p50_max_ms']} ms (target ≤ {target:.0f} ms): "
                      f"{'met' if r['meets_target'] else 'MISSED'}; all answers agree with pandas: {all(k['agree'] for k in r['kinds'])}")
    path = write_result(args.name, results)
    console.print(f"wrote {path}")
    return 0 if all(k["agree"] for r in results.values() for k in r["kinds"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
