"""Recommendations benchmark: the recommender beside its three baselines, and one user's latency.

- ``demo``: the synthetic shop (``shopsight demo``'s seed 7); cutoff = 14 days before the end of
  the events; target = the items of each user's first cart/purchase session after it.
- ``completejourney``: products as items, baskets as sessions; cutoff 2017-11-30 (the last of
  BENCHMARKS.md's), baskets dated <= C train; target = the user's first basket in the 30 days after.

HR@10 (a target item in the top 10), NDCG@10 (of the best-ranked one) and coverage (share of the
catalogue ever recommended) for the model, global popularity, popularity in the user's top
categories and item-to-item co-occurrence. Latency: p50/p95 over 200 users of the
``recommend_items`` tool on the demo workspace (reasons included) and of ranking alone on both.

    python bench/recommend.py                                  # both data sets
    python bench/recommend.py --datasets demo --demo-users 1000

Prints a table and writes ``bench/results/recommend.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, print_table, write_result  # noqa: E402

DATASETS = ("demo", "completejourney")
CJ_CUTOFF = "2017-11-30"
LATENCY_USERS = 200


def _rows(dataset: str, card: dict[str, Any]) -> list[dict[str, Any]]:
    from shopsight.behavior.models import ranking_rows

    return [{"dataset": dataset, **r} for r in ranking_rows({**card, "name": "recommend", "version": "bench"})]


def _percentiles(seconds: list[float]) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2), "n": len(ms)}


def _sample_users(events: pd.DataFrame, seed: int) -> list[str]:
    users = sorted(events["user_id"].astype(str).unique())
    rng = np.random.default_rng(seed)
    return [str(u) for u in rng.choice(users, size=min(LATENCY_USERS, len(users)), replace=False)]


def _ranking_latency(model: Any, events: pd.DataFrame, users: list[str]) -> dict[str, Any]:
    """One user's ranking from their own events (the rows already selected, as the tool's context does)."""
    from shopsight.behavior.models.rules import rows_of_users

    times = []
    for u in users:
        mine = events[rows_of_users(events, [u])]
        t = time.perf_counter()
        model.recommend(mine, 10)
        times.append(time.perf_counter() - t)
    return _percentiles(times)


def bench_demo(users: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train on a demo workspace with ``train_model`` (as `shopsight train recommend` does) and time the tool."""
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.workspace import Workspace
    from shopsight.tools import default_registry
    from shopsight.tools.context import ToolContext

    ws = Workspace(Path(tempfile.mkdtemp(prefix="bench-recommend-")) / "ws")
    build_demo_workspace(ws, users=users, seed=seed, progress=False)
    dataset = f"demo ({users} users, seed {seed})"
    t = time.perf_counter()
    trained = train_model(ws, "recommend")  # fit, evaluate, score every user, save: what `shopsight demo` adds
    card = {**trained["card"], "train_model_seconds": round(time.perf_counter() - t, 1)}
    ctx = ToolContext(ws)
    registry = default_registry()
    sample = _sample_users(ctx.get_events(), seed)
    registry.run(ctx, "recommend_items", {"user_id": sample[0]})  # warm: events, model and catalogue load once per process
    times = []
    for u in sample:
        t = time.perf_counter()
        registry.run(ctx, "recommend_items", {"user_id": u})
        times.append(time.perf_counter() - t)
    latency = {"dataset": dataset, "tool_recommend_items": _percentiles(times),
               "ranking_only": _ranking_latency(ctx.model("recommend"), ctx.get_events(), sample)}
    return _rows(dataset, card) + [{"dataset": dataset, "who": "blend weights", "note": str(card["blend"]["weights"])}], \
        {"latency": latency, "card": card}


def bench_completejourney(seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Products as items, baskets as sessions; the recommender fitted on baskets dated <= C."""
    from shopsight.behavior.adapters.completejourney import read_completejourney
    from shopsight.behavior.models.common import TrainSettings
    from shopsight.behavior.models.recommend import RecommendModel, evaluate_recommender

    events, _ = read_completejourney()
    cutoff = pd.Timestamp(CJ_CUTOFF, tz="UTC") + pd.Timedelta(days=1)
    settings = TrainSettings(seed=seed, max_len=50, epochs=12, max_seconds=150.0)
    model = RecommendModel(horizon_days=30, max_items=3000, settings=settings).fit(events, cutoff=cutoff)
    card = evaluate_recommender(model, events)
    past = events[events["ts"] < cutoff]
    latency = {"dataset": "completejourney", "ranking_only": _ranking_latency(model, past, _sample_users(past, seed))}
    return _rows("completejourney", card) + [{"dataset": "completejourney", "who": "blend weights", "note": str(card["blend"]["weights"])}], \
        {"latency": latency, "card": card}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--demo-users", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7, help="the demo shop's seed (7 is `shopsight demo`'s) and the samples'")
    parser.add_argument("--out", default="recommend", help="result name: bench/results/<out>.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # measured fastest on the shared 2-core machine
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    runs = {"demo": lambda: bench_demo(args.demo_users, args.seed), "completejourney": lambda: bench_completejourney(args.seed)}
    for name in args.datasets:
        r, d = runs[name]()
        rows += r
        details[name] = d
    shown = [{"dataset": r["dataset"], "who": r["who"],
              **{k: (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k)) for k in ("hr_at_10", "ndcg_at_10", "coverage")},
              "n": r.get("n"), "train_s": r.get("train_seconds"), "note": r.get("note", "")} for r in rows]
    console = bench_console()
    print_table("Recommendations: model vs baselines (HR@10, NDCG@10, coverage)", shown, console=console)
    lat = [{"dataset": d["latency"]["dataset"], "what": k, **v} for d in details.values() for k, v in d["latency"].items() if k != "dataset"]
    print_table(f"One user's recommendations (p50/p95 over {LATENCY_USERS} users; target <= 50 ms)", lat, console=console)
    path = write_result(args.out, {"args": vars(args), "rows": rows, "latency": lat,
                                   "cards": {k: d["card"] for k, d in details.items()}, "seconds": round(time.perf_counter() - started, 1)})
    console.print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
