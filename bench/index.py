"""Session index benchmark: build throughput, user-history lookups, semantic queries, disk size.

For each size, generates a synthetic shop with about that many sessions (varied text:
searches, item names, reviews), builds the index through ``SessionIndex.build`` (documents,
masking, MiniLM embedding and chromadb upserts all included; the one-time model load is
reported apart), then times the questions the agent asks:

- user history (metadata lookup, no vectors) through the sidecar, and straight from chromadb;
- semantic search without filters, and with each kind of filter (query embedding included);
- a no-op rebuild (what re-running `shopsight index build` costs when nothing changed);
- embedding throughput of ``embed_text`` (what builds embed) against whole documents (what
  they embedded before), on the same 512 sessions in this process: the ratio is the gain.

    python bench/index.py --sessions 10000 100000
    python bench/index.py --sessions 2000 --queries 30      # a quick check

Targets (2 cores): >= 150 sessions/s built; at 100k sessions user-history p50 <= 20 ms and
semantic query p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# Run as a script (`python bench/index.py`): make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_console, peak_rss_mb, print_table, write_result  # noqa: E402
from shopsight.index.embedder import get_embedder, usable_cores  # noqa: E402

# Sessions per synthetic user over the default 120 days (measured: 1,823 sessions / 200 users).
SESSIONS_PER_USER = 9.1
QUERIES = [
    "wireless earbuds with noise cancelling",
    "looked at laptops but did not buy",
    "bought running shoes",
    "abandoned cart with a coffee machine",
    "searched for a gift for kids",
    "refund after a broken phone",
    "long session browsing kitchen appliances",
    "quick purchase of groceries",
    "compared several gaming consoles",
    "left a bad review about delivery",
    "bought a book and a toy",
    "added skincare products to cart",
    "viewed expensive watches",
    "mobile shopper looking at sneakers",
    "checkout without purchase",
]


def pct(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2), "n": len(samples)}


def timed(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def make_workspace(root: Path, sessions: int, seed: int):
    """A workspace holding the first ``sessions`` sessions of a synthetic shop (whole users)."""
    from shopsight.behavior.synthetic import generate_shop
    from shopsight.behavior.workspace import Workspace

    shop = generate_shop(users=max(20, math.ceil(sessions * 1.1 / SESSIONS_PER_USER)), seed=seed)
    events = shop.events
    keep = events["session_id"].drop_duplicates().iloc[:sessions]
    events = events[events["session_id"].isin(set(keep))].reset_index(drop=True)
    ws = Workspace(root)
    ws.save_events(events)
    ws.save_catalogue(shop.catalogue)
    return ws, events


class PooledEmbedder:
    """Stands in for the embedder when building a large index only to time its queries.

    Embeds ``pool`` real session documents once; every later text gets one of those vectors
    (chosen by a hash of the text) plus small noise, renormalised, so the index has realistic
    clusters without hours of CPU.
    """

    def __init__(self, real: Any, events: Any, pool: int, seed: int) -> None:
        from shopsight.index.documents import session_documents

        self.real = real
        docs = session_documents(events.head(pool * 12), None)["embed_text"].tolist()[:pool]
        self.vectors = real.embed(docs)
        self.rng = np.random.default_rng(seed)

    def embed(self, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
        import zlib

        idx = [zlib.crc32(t.encode()) % len(self.vectors) for t in texts]
        v = self.vectors[idx] + self.rng.normal(0, 0.03, (len(texts), self.vectors.shape[1])).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _merge(name: str, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import json

    from bench.common import RESULTS_DIR

    path = RESULTS_DIR / f"{name}.json"
    old = json.loads(path.read_text()).get("results", []) if path.exists() else []
    seen = {(r["sessions"], r.get("mode")) for r in new}
    return [r for r in old if (r.get("sessions"), r.get("mode")) not in seen] + new


def embed_text_ab(embedder: Any, docs: Any, threads: int, n: int = 512, rounds: int = 3) -> dict[str, Any]:
    """Embedding throughput of what is embedded (``embed_text``) against the whole document
    (what builds embedded before), on the same sessions in this process.

    Each chunk of 256 is embedded both ways back to back (the order alternating), so the two
    timings of a pair see the same load; the speedup is the median of the pairs' ratios.
    """
    sample = docs.sample(min(n, len(docs)), random_state=0)
    columns = ("document", "embed_text")
    seconds: dict[str, list[float]] = {c: [] for c in columns}
    for r in range(rounds):
        for a in range(0, len(sample), 256):
            chunk = sample.iloc[a : a + 256]
            for column in columns if (r + a // 256) % 2 == 0 else columns[::-1]:
                t = time.perf_counter()
                embedder.embed(chunk[column].tolist(), threads=threads)
                seconds[column].append((time.perf_counter() - t) / len(chunk))
    ratios = np.asarray(seconds["document"]) / np.asarray(seconds["embed_text"])
    return {
        "sample": len(sample),
        "pairs": len(ratios),
        "document_docs_per_s": round(1 / float(np.median(seconds["document"])), 1),
        "embed_text_docs_per_s": round(1 / float(np.median(seconds["embed_text"])), 1),
        "speedup": round(float(np.median(ratios)), 3),
        "mean_chars": {c: round(float(sample[c].str.len().mean()), 1) for c in columns},
    }


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_size(
    sessions: int, queries: int, seed: int, batch_size: int | None, keep: Path | None, threads: int | None, pooled: int = 0
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from shopsight.index.store import BUILD_BATCH, SessionIndex

    batch_size = batch_size or BUILD_BATCH
    console = bench_console()
    root = (keep / f"index-{sessions}") if keep else Path(tempfile.mkdtemp(prefix=f"bench-index-{sessions}-"))
    if root.exists():
        shutil.rmtree(root)
    try:
        t = time.perf_counter()
        ws, events = make_workspace(root / "ws", sessions, seed)
        gen_s = time.perf_counter() - t
        n_sessions = int(events["session_id"].nunique())
        index = SessionIndex(ws, batch_size=batch_size, embed_threads=threads)
        if pooled:
            index = SessionIndex(ws, batch_size=batch_size, embedder=PooledEmbedder(index.embedder(), events, pooled, seed))  # type: ignore[arg-type]
        index.embedder()  # load the model before the clocks start (reported apart by the build anyway)
        with Progress(TextColumn(f"[bold]{n_sessions:,} sessions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("embed", total=None)
            cpu0 = time.process_time()
            stats = index.build(progress=lambda done, total: bar.update(task, completed=done, total=total))
        # CPU seconds of this process: on a shared machine, sessions per CPU-second says what
        # one dedicated core would do (torch runs 1 thread here by default).
        build_cpu_s = time.process_time() - cpu0
        noop = index.build()
        rng = np.random.default_rng(seed)
        users = rng.choice(events["user_id"].unique(), size=min(200, events["user_id"].nunique()), replace=False).tolist()
        side = index.sidecar()
        assert side is not None
        top_category = side["categories"].str.strip("|").str.split("|").explode().value_counts().index[0]
        top_country = side["country"].value_counts().index[0]
        t_end = int(side["start"].max())
        window = {"since": t_end - 14 * 86400, "until": t_end}

        embedder = index.embedder() if not pooled else index.embedder().real  # type: ignore[attr-defined]
        index = SessionIndex(ws, batch_size=batch_size, embed_threads=threads)  # queries always embed for real
        embed_q = timed(lambda i: embedder.embed([QUERIES[i % len(QUERIES)]]), queries)
        history = timed(lambda i: index.user_history(users[i % len(users)]), max(queries, 200))
        history_range = timed(lambda i: index.user_history(users[i % len(users)], since=window["since"]), max(queries, 200))
        plain = timed(lambda i: index.search(QUERIES[i % len(QUERIES)], k=10), queries)
        cases: dict[str, dict[str, Any]] = {
            "purchased": {"purchased": True},
            f"category={top_category}": {"category": top_category},
            f"country={top_country}": {"country": top_country},
            "last 14 days": window,
            f"purchased+category={top_category}": {"purchased": True, "category": top_category},
            "one user": None,
        }
        filtered: dict[str, list[float]] = {}
        for name, f in cases.items():
            if f is None:
                filtered[name] = timed(lambda i: index.search(QUERIES[i % len(QUERIES)], k=10, user_id=users[i % len(users)]), queries)
            else:
                filtered[name] = timed(lambda i, f=f: index.search(QUERIES[i % len(QUERIES)], k=10, **f), queries)
        # The same questions answered by chromadb alone (no sidecar): what the sidecar saves.
        direct = SessionIndex(ws, batch_size=batch_size)
        direct.sidecar = lambda: None  # type: ignore[method-assign]
        history_direct = timed(lambda i: direct.user_history(users[i % len(users)]), min(queries, 100))
        where_direct = timed(lambda i: direct.search(QUERIES[i % len(QUERIES)], k=10, purchased=True), min(queries, 30))
        all_filtered = [x for v in filtered.values() for x in v]
        from shopsight.index.documents import session_documents

        ab = embed_text_ab(embedder, session_documents(events, ws.load_catalogue()), threads or usable_cores())
        return {
            "sessions": n_sessions,
            "mode": f"pooled vectors ({pooled} real embeddings + noise): build/s excludes embedding" if pooled else "real embeddings",
            "batch_size": batch_size,
            "embed_threads": threads if threads is not None else usable_cores(),
            "embed_precision": get_embedder().precision,
            "users": int(events["user_id"].nunique()),
            "events": int(len(events)),
            "generate_s": round(gen_s, 1),
            "build": stats.to_dict(),
            "build_sessions_per_s": round(stats.sessions_per_second, 1),
            "build_cpu_s": round(build_cpu_s, 1),
            "build_sessions_per_cpu_s": round(stats.embedded / build_cpu_s, 1) if build_cpu_s > 0 else None,
            "embed_only_sessions_per_s": round(stats.embedded / stats.embed_seconds, 1) if stats.embed_seconds else None,
            "noop_rebuild_s": round(noop.seconds, 2),
            "embed_text_vs_document": ab,
            "query_embedding": pct(embed_q),
            "user_history": pct(history),
            "user_history_14d": pct(history_range),
            "user_history_chroma_only": pct(history_direct),
            "search_unfiltered": pct(plain),
            "search_filtered": pct(all_filtered),
            "search_filtered_by_case": {k: pct(v) for k, v in filtered.items()},
            "search_purchased_chroma_where_only": pct(where_direct),
            "disk_bytes": disk_bytes(ws.index_dir),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[10_000, 100_000], help="Index sizes to measure.")
    parser.add_argument("--queries", type=int, default=100, help="Timed queries per kind.")
    parser.add_argument("--batch-size", type=int, default=None, help="Sessions per embedded/upserted batch (default: the build's).")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="Torch threads for embedding (default: every usable core).")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the built workspaces under this folder.")
    parser.add_argument("--name", default="index", help="Result file name under bench/results/.")
    parser.add_argument(
        "--pooled-vectors", type=int, default=0, metavar="N",
        help="Latency-only mode: embed N real documents once and give every session one of those vectors plus "
        "noise, so a 100k index can be timed without hours of embedding (build/s is then NOT an embedding figure).",
    )
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    for n in args.sessions:
        results.append(run_size(n, args.queries, args.seed, args.batch_size, args.keep, args.threads, args.pooled_vectors))
        # Written after every size so a long 100k run still leaves the 10k numbers behind;
        # sizes measured by earlier runs (other modes or sizes) stay in the file.
        path = write_result(args.name, {"targets": TARGETS, "results": _merge(args.name, results)})

    rows = []
    for r in results:
        rows.append({
            "sessions": r["sessions"],
            "build/s": r["build_sessions_per_s"],
            "build/cpu-s": r.get("build_sessions_per_cpu_s"),
            "embed/s": r["embed_only_sessions_per_s"],
            "embed_text/document": r["embed_text_vs_document"]["speedup"],
            "no-op rebuild s": r["noop_rebuild_s"],
            "history p50": r["user_history"]["p50_ms"],
            "history p99": r["user_history"]["p99_ms"],
            "search p50": r["search_unfiltered"]["p50_ms"],
            "search p99": r["search_unfiltered"]["p99_ms"],
            "filtered p50": r["search_filtered"]["p50_ms"],
            "filtered p99": r["search_filtered"]["p99_ms"],
            "disk MB": round(r["disk_bytes"] / 1e6, 1),
        })
    console = bench_console()
    print_table("Session index (times in ms)", rows, console=console)
    for r in results:
        detail = [{"what": k, **v} for k, v in r["search_filtered_by_case"].items()]
        detail += [
            {"what": "query embedding only", **r["query_embedding"]},
            {"what": "user history, last 14 days", **r["user_history_14d"]},
            {"what": "user history, chromadb only", **r["user_history_chroma_only"]},
            {"what": "search purchased, chromadb where only", **r["search_purchased_chroma_where_only"]},
        ]
        print_table(f"{r['sessions']:,} sessions: detail", detail, columns=["what", "p50_ms", "p99_ms", "n"], console=console)
    console.print(f"Results written to {path}")
    return 0


TARGETS = {"build_sessions_per_s": ">= 150", "user_history_p50_ms_at_100k": "<= 20", "search_p50_ms_at_100k": "<= 50"}

if __name__ == "__main__":
    sys.exit(main())
