"""`shopsight index build --engine spark`: session documents embedded in Spark executors, upserted into a Chroma server.

Each executor takes a group of users (their events in the order ``Workspace.load_events`` gives),
writes their session documents with ``index.documents.session_documents`` and embeds and upserts
the changed ones with ``SessionIndex.upsert_sessions`` (the offline MiniLM, loaded once per Python
worker) — the code a local build runs. Resumable as a local build is: a group reads its sessions'
stored hashes and embeds only what changed, so a re-run (or a retried task) embeds only what is
missing. The driver then deletes the sessions that are gone. The vectors must go to a server
(``SHOPSIGHT_CHROMA_URL``): executors cannot share an embedded store.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from shopsight.index.store import _PAGE, BUILD_BATCH, BuildStats, SessionIndex, SessionIndexError

_WORKER_INDEX: dict[tuple[str, str, int], SessionIndex] = {}  # one client and one loaded MiniLM per Python worker


def build_index_spark(
    ws: Any,
    chroma_url: str | None,
    *,
    events: str | Path | None = None,
    master: str | None = None,
    spark: Any = None,
    users_per_group: int = 2000,
    batch_size: int = BUILD_BATCH,
    report: Callable[[str], None] | None = None,
) -> BuildStats:
    """Bring the server's session index in line with the events, embedding in Spark executors.

    Args:
        ws: the workspace (its catalogue names items; its events unless ``events`` is given).
        chroma_url: the Chroma server every executor upserts into.
        events: a Parquet file, folder or glob (default: the workspace's events).
        master: Spark master URL (default ``$SPARK_MASTER``, else ``local[2]``); ignored with ``spark``.
        spark: a running SparkSession to use.
        users_per_group: users per executor call.
        batch_size: sessions embedded and upserted per batch (the unit of resumption).
        report: called with each step's name.

    Raises:
        SessionIndexError: no server given, or the server fails.
        ScoringError: bad events path or shard; the Spark job failed after its retries.
    """
    from pyspark.sql import functions as F

    from shopsight.behavior.scoring import event_files
    from shopsight.behavior.spark import BUCKET, _bucket_of, _run, read_events, spark_session

    if not chroma_url:
        raise SessionIndexError("a Spark index build writes to a Chroma server: set SHOPSIGHT_CHROMA_URL or pass --chroma-url "
                                "(executors cannot share the workspace's embedded store)")
    say = report or (lambda step: None)
    started = time.perf_counter()
    index = SessionIndex(ws, chroma_url=chroma_url, batch_size=batch_size)
    index.collection()  # fail here, on the driver, if the server is down
    index.sidecar_path.unlink(missing_ok=True)  # a sidecar from before would show old documents; the server answers alone
    files = event_files(ws, events)
    spark = spark or spark_session(master)
    df = read_events(spark, files, positions=True)
    n_users = int(_run(lambda: df.agg(F.countDistinct("user_id").alias("n")).collect()[0]["n"], files))
    n_groups = max(1, math.ceil(n_users / max(users_per_group, 1)))
    catalogue = ws.load_catalogue()
    embed = _group_embedder(str(ws.root), chroma_url, batch_size, catalogue)
    out = df.withColumn(BUCKET, _bucket_of(n_groups)).groupBy(BUCKET).applyInPandas(
        embed, "id string, content_hash string, embedded boolean")
    say("embedding sessions")
    rows = _run(lambda: out.collect(), files)
    wanted = {r["id"] for r in rows}
    say("removing sessions that are gone")
    removed = [i for i in index.stored_hashes() if i not in wanted]
    col = index.collection()
    for a in range(0, len(removed), _PAGE):
        with index._chroma_errors():
            col.delete(ids=removed[a: a + _PAGE])
    embedded = sum(bool(r["embedded"]) for r in rows)
    stats = BuildStats(sessions=len(rows), embedded=embedded, unchanged=len(rows) - embedded, removed=len(removed), target=chroma_url)
    stats.seconds = time.perf_counter() - started
    stats.extra.update({"engine": "spark", "master": spark.sparkContext.master, "groups": n_groups})
    return stats


def _group_embedder(root: str, chroma_url: str, batch_size: int, catalogue: pd.DataFrame | None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def embed(events: pd.DataFrame) -> pd.DataFrame:
        from shopsight.behavior.scoring import canonical_group
        from shopsight.behavior.spark import BUCKET, FILE_ORDER
        from shopsight.behavior.workspace import Workspace

        key = (root, chroma_url, batch_size)
        if key not in _WORKER_INDEX:
            _WORKER_INDEX[key] = SessionIndex(Workspace(Path(root)), chroma_url=chroma_url, batch_size=batch_size, embed_threads=1)
        group = canonical_group(events.drop(columns=[BUCKET]), order=FILE_ORDER)
        _, docs = _WORKER_INDEX[key].upsert_sessions(group, catalogue)
        return pd.DataFrame({"id": docs["id"].astype(str), "content_hash": docs["content_hash"].astype(str),
                             "embedded": docs["embedded"].astype(bool)})

    return embed
