"""How cost grows with users: ingest, features + scoring, query and training, local vs Spark local[2].

For each size (synthetic users) it writes the demo shop's events once, then measures each stage in
a fresh process (wall time; peak memory of the process and every child it started, so Spark's
JVM and Python workers count): ingest (local: ``shopsight ingest`` of the events file into a
workspace; Spark: read and validate the shards and count their users), score (``shopsight score
--events`` of the shop's events file with each engine), query (local: three DuckDB metric queries over events and published scores;
Spark: the same mean churn probability by country in Spark SQL), train (churn on every user, 3
epochs; local: the event table in memory and ``train_model``; Spark: churn's training table built
on Spark and the model trained here streaming from its shards; the test ROC-AUC beside), index (every
session embedded from nothing with the offline MiniLM; local: ``SessionIndex.build`` into the
workspace's embedded Chroma store; Spark: ``build_index_spark``, executors upserting into a Chroma
server the stage starts on 127.0.0.1; sessions per second and the store's size on disk beside). The
models scored are trained once on a small shop and copied in: scoring cost is what grows with users.

    python bench/scale.py --users 10000 100000          # table, bench/results/scale.json, bench/results/scale.png
    python bench/scale.py --users 1000000 --engines local spark   # local-table at 1M would hold ~14 GB of table
    python bench/scale.py --users 1000 3000 10000 --stages index --engines local spark   # embedding-bound: ~12 min a 10k shop

Also reported: the local event table's size in memory beside the local scoring peak (the
local path holds one copy of the table), the log-log slope of each stage's cost against users,
and where the local path's peak memory would reach 24 GB at that slope.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, BenchmarkError, bench_console, print_table, run_isolated, write_result  # noqa: E402

STAGES = ("ingest", "score", "query", "train", "index")
# local: the default path past a few hundred MB (groups of users streamed from disk); local-table: the
# same engine holding the whole event table (scoring only: what the default replaced for big shops)
ENGINES = ("local", "local-table", "spark")
MEMORY_LIMIT_GB = 24.0


# --- measuring one stage (in its own process) ----------------------------------------------


class TreePeak(threading.Thread):
    """Peak resident memory of this process plus all its descendants (sampled every 0.2 s), in MB."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss_mb(os.getpid()))
            self._done.wait(0.2)

    def stop(self) -> float:
        self._done.set()
        self.join(2)
        self.peak = max(self.peak, tree_rss_mb(os.getpid()))
        return self.peak


def tree_rss_mb(root: int) -> float:
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
        rss[int(entry.name)] = pages
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    return sum(rss.get(p, 0) for p in tree) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measured(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fn``: its wall time, the peak memory of the process tree meanwhile, and the memory before it."""
    before = tree_rss_mb(os.getpid())
    peak = TreePeak()
    peak.start()
    t0 = time.perf_counter()
    extra = fn()
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "peak_mb": round(peak.stop(), 1), "before_mb": round(before, 1), **extra}


def bench_ingest_limits() -> Any:
    """The ingest's limits for the bench: the default 4 GB budget refuses 100k users; the bench measures what it really takes."""
    from shopsight.behavior.events import IngestLimits

    return IngestLimits(max_memory_mb=int(MEMORY_LIMIT_GB * 1024), max_rows=500_000_000)


def worker(stage: str, engine: str, users: int, workdir: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # two cores shared with Spark's two workers or other processes
    shop = workdir / f"shop-{users}"
    ws_dir = workdir / f"ws-{users}-{engine}"
    from shopsight.behavior.workspace import Workspace

    ws = Workspace(ws_dir)
    if stage == "ingest" and engine == "local":
        from shopsight.behavior.ingest import ingest_file

        shutil.rmtree(ws_dir, ignore_errors=True)
        shutil.copytree(workdir / "models-ws" / "models", ws.models_dir)

        from shopsight.behavior.events import estimate_ingest

        limits = bench_ingest_limits()
        estimate = estimate_ingest(shop / "events.parquet")

        def run() -> dict[str, Any]:
            _, report = ingest_file(ws, shop / "events.parquet", limits=limits, return_events=False)
            return {"events": int(report.rows_kept), "ingest_estimate_mb": round(float(getattr(estimate, "memory_mb", 0.0)), 1)}

        return measured(run)
    if stage == "ingest":
        from pyspark.sql import functions as F

        from shopsight.behavior.spark import read_events, spark_session

        shutil.rmtree(ws_dir, ignore_errors=True)
        shutil.copytree(workdir / "models-ws" / "models", ws.models_dir)
        t0 = time.perf_counter()
        spark = spark_session("local[2]")
        startup = time.perf_counter() - t0

        def run() -> dict[str, Any]:
            df = read_events(spark, [shop / "events.parquet"])
            row = df.agg(F.count("*").alias("n"), F.countDistinct("user_id").alias("u")).collect()[0]
            return {"events": int(row["n"]), "users": int(row["u"]), "spark_startup_s": round(startup, 1)}

        return measured(run)
    if stage == "score" and engine in ("local", "local-table"):
        from shopsight.behavior.models import load_model
        from shopsight.behavior.scoring import read_events, score_local

        if not ws.models_dir.is_dir():  # a size too big to ingest locally: the models alone, the events read from the file
            shutil.copytree(workdir / "models-ws" / "models", ws.models_dir)
        for name in ("intent", "churn", "risk"):
            load_model(ws, name)  # imports and weights are counted in before_mb, not in the stage
        # the events file itself, as the Spark engine reads it (and a size whose ingest would not fit still scores)
        memory = "stream" if engine == "local" else "table"

        out = measured(lambda: {"users": score_local(ws, shop / "events.parquet", chunk_users=5000, memory=memory)["users"]})
        if memory == "table":  # what that mode holds, beside its peak: the table's size in memory (read after the measure)
            from shopsight.behavior.scoring import check_shards

            files = [shop / "events.parquet"]
            out["table_mb"] = round(read_events(files, check_shards(files)).memory_usage(deep=True).sum() / 2**20, 1)
        return out
    if stage == "score":
        from shopsight.behavior.spark import score_spark, spark_session

        t0 = time.perf_counter()
        spark = spark_session("local[2]")
        startup = time.perf_counter() - t0

        def run() -> dict[str, Any]:
            users = score_spark(ws, shop / "events.parquet", spark=spark, users_per_group=5000)["users"]
            return {"users": users, "spark_startup_s": round(startup, 1)}

        return measured(run)
    if stage == "query" and engine == "local":
        from shopsight.behavior.query import QueryEngine

        def run() -> dict[str, Any]:
            engine_ = QueryEngine(ws)
            try:
                for q in ({"metric": "score_mean", "model": "churn", "group_by": "country"}, {"metric": "users", "group_by": "device"},
                          {"metric": "revenue", "group_by": "week"}):
                    engine_.run(q)
            finally:
                engine_.close()
            return {"queries": 3}

        return measured(run)
    if stage == "query":
        from pyspark.sql import functions as F

        from shopsight.behavior.models.registry import score_path
        from shopsight.behavior.spark import read_events, spark_session

        spark = spark_session("local[2]")

        def run() -> dict[str, Any]:
            events = read_events(spark, [shop / "events.parquet"]).select("user_id", "country").distinct()
            scores = spark.read.parquet(str(score_path(ws, "churn"))).select("user_id", "probability")
            rows = events.join(scores, "user_id").groupBy("country").agg(F.avg("probability")).collect()
            return {"groups": len(rows)}

        return measured(run)
    if stage == "train":
        # churn, every user of the shop, 3 epochs: local = the event table in memory and `train_model` on it;
        # spark = its training table built on Spark (churn's own per-user rows) and the model streamed from the shards
        from shopsight.behavior.models import train_from_table, train_model
        from shopsight.behavior.models.churn import ChurnModel
        from shopsight.behavior.models.common import TrainSettings

        settings = TrainSettings(epochs=3, seed=0)
        ws = Workspace(workdir / f"ws-{users}-{engine}-train")  # its own: the new churn versions stay out of the score stage's
        shutil.rmtree(ws.root, ignore_errors=True)
        if engine == "local-table":
            raise SystemExit("train: engines local and spark")
        if engine == "local":
            from shopsight.behavior.scoring import check_shards, read_events

            def run() -> dict[str, Any]:
                files = [shop / "events.parquet"]
                events = read_events(files, check_shards(files))
                card = train_model(ws, "churn", events=events, settings=settings)["card"]
                return {"events": int(len(events)), "roc_auc": card.get("metrics", {}).get("roc_auc")}

            return measured(run)
        from shopsight.behavior.spark import build_training_table, spark_session

        t0 = time.perf_counter()
        spark = spark_session("local[2]")
        startup = time.perf_counter() - t0

        def run() -> dict[str, Any]:
            table = build_training_table(ws, ChurnModel(settings=settings), shop / "events.parquet", spark=spark, name="churn-table-bench")
            card = train_from_table(ws, "churn", table, settings=settings)["card"]
            return {"roc_auc": card.get("metrics", {}).get("roc_auc"), "spark_startup_s": round(startup, 1)}

        return measured(run)
    if stage == "index":
        return index_stage(engine, users, workdir, shop, ws)
    raise SystemExit(f"unknown stage {stage}/{engine}")


def index_stage(engine: str, users: int, workdir: Path, shop: Path, ws: Any) -> dict[str, Any]:
    """Every session embedded from nothing. local: ``SessionIndex.build`` into the workspace's embedded
    store, from the ingested events (ingested first, unmeasured, if the ingest stage has not run);
    spark: ``build_index_spark`` from the shop's events file into a Chroma server this stage starts on
    127.0.0.1 (a child: its memory counts). Both with the shop's catalogue, so the documents are the same."""
    if engine == "local-table":
        raise SystemExit("index: engines local and spark")
    if not ws.models_dir.is_dir():
        shutil.copytree(workdir / "models-ws" / "models", ws.models_dir)
    shutil.copyfile(shop / "catalogue.parquet", ws.catalogue_path)
    if engine == "local":
        from shopsight.index.store import SessionIndex

        if not ws.exists():
            from shopsight.behavior.ingest import ingest_file

            ingest_file(ws, shop / "events.parquet", limits=bench_ingest_limits(), return_events=False)
        shutil.rmtree(ws.index_dir, ignore_errors=True)
        index = SessionIndex(ws)

        def run() -> dict[str, Any]:
            stats = index.build().to_dict()
            return {"sessions": stats["sessions"], "sessions_per_s": stats["sessions_per_second"], "index_mb": round(dir_mb(ws.index_dir), 1)}

        return measured(run)
    import urllib.request

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from servers import free_port, running  # the loopback server helper the tests use

    from shopsight.behavior.spark import spark_session
    from shopsight.index.spark import build_index_spark

    chroma = workdir / f"chroma-{users}"
    shutil.rmtree(chroma, ignore_errors=True)
    chroma.mkdir(parents=True)
    exe = Path(sys.executable).parent / "chroma"
    url = f"http://127.0.0.1:{free_port()}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as r:
            return r.status == 200

    cmd = [str(exe if exe.exists() else shutil.which("chroma") or "chroma"), "run", "--path", str(chroma / "data"),
           "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    with running(cmd, ready, chroma / "chroma.log", timeout_s=120, name="chroma server"):
        t0 = time.perf_counter()
        spark = spark_session("local[2]")
        startup = time.perf_counter() - t0

        def run() -> dict[str, Any]:
            stats = build_index_spark(ws, url, events=shop / "events.parquet", spark=spark).to_dict()
            return {"sessions": stats["sessions"], "sessions_per_s": stats["sessions_per_second"], "spark_startup_s": round(startup, 1)}

        out = measured(run)
    out["index_mb"] = round(dir_mb(chroma / "data"), 1)
    return out


def dir_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20 if folder.exists() else 0.0


# --- the driver ----------------------------------------------------------------------------


def prepare(workdir: Path, users: list[int], model_users: int) -> dict[int, float]:
    """The models (trained once on ``model_users``) and each size's events; returns generation seconds."""
    from shopsight.behavior.synthetic import write_shop

    models_ws = workdir / "models-ws"
    if not (models_ws / "models").is_dir():
        from shopsight.behavior.demo import build_demo_workspace
        from shopsight.behavior.models import train_model
        from shopsight.behavior.models.common import TrainSettings
        from shopsight.behavior.workspace import Workspace

        ws = Workspace(models_ws)
        build_demo_workspace(ws, users=model_users, days=120, seed=7, progress=False)
        events = ws.load_events()
        for name in ("intent", "churn", "risk"):
            train_model(ws, name, events=events, settings=TrainSettings(epochs=3, max_seconds=60))
    generated = {}
    for n in users:
        shop = workdir / f"shop-{n}"
        if not (shop / "events.parquet").exists():
            t0 = time.perf_counter()
            write_shop(shop, users=n, days=120, seed=11)
            generated[n] = round(time.perf_counter() - t0, 1)
    return generated


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(cost) against log(users): 1 = linear."""
    pts = [(math.log(u), math.log(c)) for u, c in points if c > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / den, 2) if den else None


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (stage, engine) in sorted({(r["stage"], r["engine"]) for r in rows if r.get("seconds")}):
        pts = sorted(((r["users"], r) for r in rows if r["stage"] == stage and r["engine"] == engine and r.get("seconds")), key=lambda x: x[0])
        style = "-o" if engine == "local" else "--s"
        axes[0].plot([u for u, _ in pts], [r["seconds"] for _, r in pts], style, label=f"{stage} ({engine})")
        axes[1].plot([u for u, _ in pts], [r["peak_mb"] / 1024 for _, r in pts], style, label=f"{stage} ({engine})")
    for ax, what in zip(axes, ("wall time (s)", "peak memory (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("synthetic users")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].axhline(MEMORY_LIMIT_GB, color="red", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle("ShopSight cost against users: local vs Spark local[2] (2 shared cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES,
                    help="local-table holds the whole table to score: leave it out at sizes whose table passes the memory")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "shopsight-scale")
    ap.add_argument("--model-users", type=int, default=2000)
    ap.add_argument("--report-only", action="store_true", help="Print and plot bench/results/scale.json again; measure nothing.")
    ap.add_argument("--worker", nargs=3, metavar=("STAGE", "ENGINE", "USERS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        stage, engine, users = args.worker
        print(json.dumps(worker(stage, engine, int(users), args.workdir)))
        return 0
    console = bench_console()
    path = RESULTS_DIR / "scale.json"
    old = json.loads(path.read_text()).get("rows", []) if path.exists() else []
    generated: dict[int, float] = {}
    if args.report_only:
        args.users, old_generated = [], json.loads(path.read_text()).get("generated_seconds", {}) if path.exists() else {}
        generated = old_generated
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        generated = prepare(args.workdir, args.users, args.model_users)
    rows = [r for r in old if not (r["users"] in args.users and r["engine"] in args.engines and r["stage"] in args.stages)]
    for n in args.users:
        for engine in args.engines:
            for stage in args.stages:
                if engine == "local-table" and stage != "score":
                    continue  # the table mode differs from local in scoring only
                console.print(f"[dim]{n:,} users: {stage} ({engine})…[/]")
                try:
                    r = run_isolated([str(Path(__file__).resolve()), "--worker", stage, engine, str(n), "--workdir", str(args.workdir)])
                except BenchmarkError as exc:  # recorded, not hidden: the table says which stage did not finish
                    console.print(f"  [red]failed:[/] {exc}")
                    rows.append({"users": n, "engine": engine, "stage": stage, "seconds": None, "peak_mb": None, "error": str(exc)[:300]})
                    continue
                rows.append({"users": n, "engine": engine, "stage": stage, **r})
                console.print(f"  {r['seconds']} s, peak {r['peak_mb']:,} MB")
                write_result("scale", {"rows": rows, "partial": True})  # a long run keeps what it measured
    rows.sort(key=lambda r: (r["users"], r["engine"], STAGES.index(r["stage"])))
    print_table("cost against users (wall time; peak memory of the process tree)", rows,
                ["users", "engine", "stage", "seconds", "peak_mb", "before_mb", "events", "table_mb", "ingest_estimate_mb", "spark_startup_s", "roc_auc",
                 "sessions", "sessions_per_s", "index_mb", "error"])
    slopes = []
    for stage in STAGES:
        for engine in ENGINES:
            pts = [(r["users"], r) for r in rows if r["stage"] == stage and r["engine"] == engine and r.get("seconds")]
            if len(pts) >= 2:
                slopes.append({"stage": stage, "engine": engine, "time_slope": slope([(u, r["seconds"]) for u, r in pts]),
                               "memory_slope": slope([(u, r["peak_mb"]) for u, r in pts])})
    print_table("log-log slope of cost against users (1 = linear)", slopes)
    fits = {}
    for stage, engine in [(s_, e_) for s_ in STAGES for e_ in ("local", "local-table")]:
        # peak = fixed + per-user cost, fitted on the two largest sizes; where it meets 24 GB
        pts = sorted((r["users"], r["peak_mb"]) for r in rows if r["stage"] == stage and r["engine"] == engine and r.get("peak_mb"))
        if len(pts) >= 2 and pts[-1][0] > pts[-2][0]:
            (u1, m1), (u2, m2) = pts[-2], pts[-1]
            per_user = (m2 - m1) / (u2 - u1)
            fits[f"{stage} ({engine})"] = {"mb_per_1k_users": round(per_user * 1000, 1), "fixed_mb": round(m2 - per_user * u2),
                           "users_at_24gb": int(u2 + (MEMORY_LIMIT_GB * 1024 - m2) / per_user) if per_user > 0 else None}
    if fits:
        print_table("local peak memory: fixed + per-user (fitted on the two largest sizes), and where it reaches 24 GB",
                    [{"stage": k, **v} for k, v in fits.items()])
    png = RESULTS_DIR / "scale.png"
    plot(rows, png)
    out = write_result("scale", {"rows": rows, "slopes": slopes, "local_24gb_users": fits, "generated_seconds": generated, "png": str(png)})
    console.print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
