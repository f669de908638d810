"""`shopsight index build --engine spark`: executors embed session documents and upsert them into a Chroma
server; the server then holds what a local build holds, and a re-run embeds only what is missing."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from shopsight.behavior.workspace import Workspace
from shopsight.index.store import SessionIndex, SessionIndexError
from servers import free_port, running  # tests/ is on sys.path (no __init__.py)

pytestmark = pytest.mark.slow
pytest.importorskip("pyspark")


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Workspace:
    from shopsight.behavior.demo import build_demo_workspace

    ws = Workspace(tmp_path_factory.mktemp("index-spark") / "ws")
    build_demo_workspace(ws, users=20, days=60, seed=7, progress=False)
    return ws


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory) -> str:
    """One `chroma run` on 127.0.0.1 for the module (the tests below build on each other's index)."""
    exe = Path(sys.executable).parent / "chroma"
    exe = exe if exe.exists() else Path(shutil.which("chroma") or "chroma")
    port, folder = free_port(), tmp_path_factory.mktemp("chroma")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as r:
            return r.status == 200

    cmd = [str(exe), "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, ready, folder / "chroma.log", timeout_s=60, name="chroma server"):
        yield url


def contents(index: SessionIndex) -> dict[str, tuple]:
    got = index.collection().get(include=["documents", "metadatas", "embeddings"])
    return {i: (d, m, np.asarray(e)) for i, d, m, e in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"])}


def test_the_spark_index_holds_the_documents_of_the_local_build(shop, spark, chroma_server):
    from shopsight.index.spark import build_index_spark

    local = SessionIndex(shop)
    local.build()
    want = contents(local)
    local.close()
    stats = build_index_spark(shop, chroma_server, spark=spark, users_per_group=8, batch_size=64)
    assert stats.sessions == stats.embedded == len(want) > 50
    assert stats.extra["groups"] == 3
    got = contents(SessionIndex(shop, chroma_url=chroma_server))
    assert sorted(got) == sorted(want)
    for sid, (doc, meta, vec) in want.items():
        assert got[sid][0] == doc, sid
        assert got[sid][1] == meta, sid
        assert float(np.dot(vec, got[sid][2]) / (np.linalg.norm(vec) * np.linalg.norm(got[sid][2]))) > 0.999, sid

    # resumable: a re-run embeds nothing; sessions lost from the server are embedded again, and only they
    assert build_index_spark(shop, chroma_server, spark=spark, users_per_group=8).embedded == 0
    server = SessionIndex(shop, chroma_url=chroma_server)
    lost = sorted(want)[:7]
    server.collection().delete(ids=lost)
    again = build_index_spark(shop, chroma_server, spark=spark, users_per_group=8)
    assert (again.embedded, again.unchanged, again.removed) == (7, len(want) - 7, 0)
    assert set(server.collection().get(ids=lost)["ids"]) == set(lost)


def test_sessions_gone_from_the_events_are_removed_from_the_server(shop, spark, chroma_server):
    from shopsight.index.spark import build_index_spark

    server = SessionIndex(shop, chroma_url=chroma_server)
    server.collection().upsert(ids=["ghost-s1"], embeddings=[[0.1] * 384], documents=["gone"], metadatas=[{"user_id": "ghost", "content_hash": "x"}])
    stats = build_index_spark(shop, chroma_server, spark=spark, users_per_group=8)
    assert (stats.removed, stats.embedded) == (1, 0)
    assert server.collection().get(ids=["ghost-s1"])["ids"] == []


def test_a_spark_build_needs_a_server(shop, spark):
    from shopsight.index.spark import build_index_spark

    with pytest.raises(SessionIndexError, match="SHOPSIGHT_CHROMA_URL"):
        build_index_spark(shop, None, spark=spark)
