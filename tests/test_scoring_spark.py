"""`shopsight score`: the Spark engine against the local one on a 2,000-user demo, what the readers see,
and the failures (bad path, unreadable shard, mismatched shards, a killed Python worker) that must
never leave a partial table published.

One SparkSession (local[2], 4 shuffle partitions, no UI, bound to 127.0.0.1) serves the module.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shopsight.behavior.scoring import ScoreRun, ScoringError, current_run, published_table, read_table, score_local
from shopsight.behavior.workspace import Workspace

pytestmark = pytest.mark.slow
pyspark = pytest.importorskip("pyspark")

MODELS = ("intent", "churn", "risk")
USERS = 2000


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Workspace:
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings

    ws = Workspace(tmp_path_factory.mktemp("score") / "ws")
    build_demo_workspace(ws, users=USERS, days=100, seed=7, progress=False)
    events = ws.load_events()
    settings = TrainSettings(epochs=2, hidden=16, emb_dim=8, max_len=32, max_seconds=30)
    for name in MODELS:
        train_model(ws, name, events=events, settings=settings)
    return ws


def tables(ws: Workspace) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """The published (scores, features) of every model, sorted by user."""
    manifest = current_run(ws)
    out = {}
    for name in MODELS:
        version = manifest["tables"][name].split("@")[1]
        s = read_table(published_table(ws, name, version, "scores")).sort_values("user_id", ignore_index=True)
        f = read_table(published_table(ws, name, version, "features")).sort_values("user_id", ignore_index=True)
        out[name] = (s, f)
    return out


@pytest.fixture(scope="module")
def both(shop: Workspace, spark) -> dict[str, dict]:
    """Each engine's published tables on the shop's events: local holding the table, local streaming
    groups of users from disk, then Spark."""
    import torch

    torch.set_num_threads(1)
    local_manifest = score_local(shop, chunk_users=700, memory="table")
    local = tables(shop)
    stream_manifest = score_local(shop, chunk_users=600, memory="stream")
    stream = tables(shop)
    from shopsight.behavior.spark import score_spark

    spark_manifest = score_spark(shop, spark=spark, users_per_group=400)
    return {"local": {"manifest": local_manifest, "tables": local}, "stream": {"manifest": stream_manifest, "tables": stream},
            "spark": {"manifest": spark_manifest, "tables": tables(shop)}}


def assert_same_column(a: pd.Series, b: pd.Series, what: str) -> None:
    if pd.api.types.is_float_dtype(a) or pd.api.types.is_float_dtype(b):
        x, y = a.to_numpy(dtype="float64", na_value=np.nan), b.to_numpy(dtype="float64", na_value=np.nan)
        assert np.array_equal(np.isnan(x), np.isnan(y)), f"{what}: missing values differ"
        assert np.allclose(x, y, rtol=0, atol=1e-6, equal_nan=True), f"{what}: max difference {np.nanmax(np.abs(x - y))}"
    else:
        assert a.astype(object).where(a.notna(), None).tolist() == b.astype(object).where(b.notna(), None).tolist(), what


# --- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["spark", "stream"])
@pytest.mark.parametrize("name", MODELS)
def test_spark_scores_equal_local_scores_per_user(both, name, other):
    """Spark, and the local engine streaming groups from disk, give the scores of the local engine holding the table."""
    local, spark = both["local"]["tables"][name][0], both[other]["tables"][name][0]
    assert len(local) == len(spark) == USERS
    assert list(local.columns) == list(spark.columns)
    assert "probability" in local.columns and local["probability"].between(0, 1).all()
    for col in local.columns:
        assert_same_column(local[col], spark[col], f"{name} scores, column {col}")


@pytest.mark.parametrize("other", ["spark", "stream"])
@pytest.mark.parametrize("name", MODELS)
def test_spark_features_equal_local_features_column_by_column(both, name, other):
    local, spark = both["local"]["tables"][name][1], both[other]["tables"][name][1]
    assert len(local) == len(spark) == USERS
    assert list(local.columns) == list(spark.columns) and len(local.columns) > 5
    for col in local.columns:
        assert_same_column(local[col], spark[col], f"{name} features, column {col}")


def test_local_engine_matches_the_training_time_scores(shop, both):
    """Scoring in chunks of users gives what scoring the whole table at once gives (score_users)."""
    from shopsight.behavior.models import load_model
    from shopsight.behavior.models.evaluation import score_users

    events = shop.load_events()
    for name in MODELS:
        whole = score_users(load_model(shop, name), events).sort_values("user_id", ignore_index=True)
        chunked = both["local"]["tables"][name][0]
        assert whole["user_id"].tolist() == chunked["user_id"].tolist()
        assert np.allclose(whole["probability"], chunked["probability"], atol=1e-6)


def test_manifests_name_each_model_version_and_engine(both):
    for engine in ("local", "stream", "spark"):
        m = both[engine]["manifest"]
        assert m["engine"] == ("local" if engine == "stream" else engine) and m["users"] == USERS
        assert m["tables"] == {n: f"{n}@v1" for n in MODELS}
    assert both["local"]["manifest"]["asof"] == both["spark"]["manifest"]["asof"] == both["stream"]["manifest"]["asof"]


def test_readers_use_the_published_tables(shop, both):
    """top_users, the metric query (DuckDB) and load_scores read the Spark run's part files."""
    from shopsight.behavior.models.registry import load_scores, score_path
    from shopsight.behavior.query import QueryEngine
    from shopsight.tools.context import ToolContext
    from shopsight.tools.top_users import top_users

    spark_churn = both["spark"]["tables"]["churn"][0]
    path = score_path(shop, "churn")
    assert path.is_dir() and path.parent.name == "churn@v1" and path.parent.parent.name == both["spark"]["manifest"]["run"]
    assert len(load_scores(shop, "churn")) == USERS
    ctx = ToolContext(shop)
    try:
        r = top_users(ctx, "churn", limit=3)
    finally:
        ctx.close()
    best = spark_churn.sort_values(["probability", "user_id"], ascending=[False, True]).head(3)
    assert [u["user_id"] for u in r["users"]] == best["user_id"].tolist()
    assert r["n_scored"] == USERS and r["citations"]["model"] == "churn@v1"
    engine = QueryEngine(shop)
    try:
        q = engine.run({"metric": "score_mean", "model": "risk"})
    finally:
        engine.close()
    risk = both["spark"]["tables"]["risk"][0]["probability"]
    assert q.total.denominator == USERS
    assert q.total.numerator == pytest.approx(risk.sum(), abs=1e-5)  # the engine rounds to 6 decimals
    assert q.citations.models == ["risk@v1"]


# --- errors: nothing partial is ever published -------------------------------------------------


def published_state(ws: Workspace) -> tuple:
    root = ws.root / "scores"
    return ((root / "current.json").read_text(), sorted(p.name for p in root.iterdir()))


def shards(ws: Workspace, folder: Path, users: int | None = None, n: int = 2) -> list[Path]:
    """The workspace's events (of the first ``users`` users) as ``n`` Parquet shards split by user."""
    events = ws.load_events()
    ids = sorted(events["user_id"].unique())[:users]
    events = events[events["user_id"].isin(ids)]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, part in enumerate(np.array_split(np.asarray(ids, dtype=object), n)):
        path = folder / f"part-{i}.parquet"
        events[events["user_id"].isin(set(part))].to_parquet(path, index=False)
        out.append(path)
    return out


@pytest.mark.parametrize("engine", ["local", "stream", "spark"])
def test_a_bad_events_path_is_named(shop, both, spark, tmp_path, engine):
    before = published_state(shop)
    for bad in (tmp_path / "nope", tmp_path / "none-*.parquet"):
        with pytest.raises(ScoringError, match=re.escape(str(bad))):
            run_engine(shop, engine, spark, bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoringError, match="holds no file"):
        run_engine(shop, engine, spark, tmp_path / "empty")
    assert published_state(shop) == before


@pytest.mark.parametrize("engine", ["local", "stream", "spark"])
def test_an_unreadable_shard_is_named_and_nothing_is_published(shop, both, spark, tmp_path, engine):
    before = published_state(shop)
    folder = tmp_path / "shards"
    good = shards(shop, folder, users=50)
    broken = folder / "part-9.parquet"
    broken.write_bytes(good[0].read_bytes()[: 3000])  # a shard cut short: no footer
    with pytest.raises(ScoringError, match=f"cannot read the events shard {broken}"):
        run_engine(shop, engine, spark, folder)
    assert published_state(shop) == before
    assert not list((shop.root / "scores").glob(".run-*")), "the staging folder was left behind"


@pytest.mark.parametrize("engine", ["local", "stream", "spark"])
def test_shards_with_different_schemas_are_named(shop, both, spark, tmp_path, engine):
    before = published_state(shop)
    folder = tmp_path / "shards"
    first, second = shards(shop, folder, users=50)
    table = pq.read_table(second)
    table = table.set_column(table.schema.get_field_index("price"), "price", pa.compute.cast(table["price"], pa.string()))
    pq.write_table(table, second)
    with pytest.raises(ScoringError, match="disagree on column 'price'") as err:
        run_engine(shop, engine, spark, str(folder / "*.parquet"))
    assert str(first) in str(err.value) and str(second) in str(err.value)
    assert published_state(shop) == before


@pytest.mark.parametrize("engine", ["local", "stream", "spark"])
def test_a_shard_without_user_ids_is_named(shop, both, spark, tmp_path, engine):
    folder = tmp_path / "shards"
    _, second = shards(shop, folder, users=50)
    pq.write_table(pq.read_table(second).drop_columns(["user_id"]), second)
    with pytest.raises(ScoringError, match=f"{second} lacks the column user_id"):
        run_engine(shop, engine, spark, folder)


def test_the_local_engine_streams_past_the_size_and_leaves_no_partition_behind(shop, both, monkeypatch):
    """auto holds the table for small files and streams past STREAM_ABOVE_BYTES; a stream's partitions go with it."""
    import shopsight.behavior.scoring as scoring

    chosen = []
    real = scoring._score_streamed
    monkeypatch.setattr(scoring, "_score_streamed", lambda *a, **k: chosen.append("stream") or real(*a, **k))
    score_local(shop)
    assert chosen == []  # 2,000 users' files are far below the default
    monkeypatch.setattr(scoring, "STREAM_ABOVE_BYTES", 0)
    seen = []
    manifest = score_local(shop, chunk_users=900, progress=lambda done, total: seen.append((done, total)))
    assert chosen == ["stream"] and manifest["users"] == USERS
    assert seen[-1] == (USERS, USERS) and len(seen) == 3  # ceil(2000 / 900) groups, each reported
    run = shop.root / "scores" / manifest["run"]
    assert not (run / "_events").exists() and not list((shop.root / "scores").glob(".run-*"))
    with pytest.raises(ScoringError, match="unknown memory mode 'disk'"):
        score_local(shop, memory="disk")


def test_a_run_short_of_users_is_refused_not_published(shop, both):
    before = published_state(shop)
    run = ScoreRun.start(shop, {n: f"{n}@v1" for n in MODELS}, "local")
    wide = pd.DataFrame({"user_id": ["u1", "u2"], **{f"{n}.s.probability": [0.1, 0.2] for n in MODELS},
                         **{f"{n}.f.x": [1.0, 2.0] for n in MODELS}})
    run.write_wide(wide)
    with pytest.raises(ScoringError, match="incomplete"):
        run.publish(users=3, asof=pd.Timestamp("2026-01-01", tz="UTC"), source="test")
    assert published_state(shop) == before
    assert not run.staging.exists()


def test_a_failed_spark_job_publishes_nothing(shop, both, spark, tmp_path, monkeypatch):
    """A task that keeps failing (every attempt) ends in one clear error; the previous run stays current."""
    import shopsight.behavior.spark as spark_mod
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the executors cannot import this test module
    before = published_state(shop)
    monkeypatch.setattr(spark_mod, "_group_scorer", failing_scorer)
    shards(shop, tmp_path / "s", users=40)
    with pytest.raises(ScoringError, match=r"the Spark job failed after 4 attempts per task: RuntimeError: disk full on this executor"):
        spark_mod.score_spark(shop, tmp_path / "s", spark=spark, users_per_group=10)
    assert published_state(shop) == before
    assert not list((shop.root / "scores").glob(".run-*"))


def test_a_killed_python_worker_is_retried_and_the_scores_are_whole(shop, both, spark, tmp_path):
    """SIGKILL one executor Python worker while it scores: the task is retried and the run is complete and correct."""
    from shopsight.behavior.spark import score_spark

    ws = Workspace(tmp_path / "ws2")
    shutil.copytree(shop.models_dir, ws.models_dir)
    folder = tmp_path / "shards"
    shards(shop, folder, users=600, n=3)
    expected = score_local(ws, folder, chunk_users=600)
    want = tables(ws)
    killer = WorkerKiller()
    killer.start()
    try:
        manifest = score_spark(ws, folder, spark=spark, users_per_group=60)
    finally:
        killer.stop()
    assert killer.killed, "no busy Python worker was found to kill"
    assert manifest["users"] == expected["users"] == 600
    got = tables(ws)
    for name in MODELS:
        assert_same_column(want[name][0]["probability"], got[name][0]["probability"], f"{name} after a lost worker")
        assert want[name][0]["user_id"].tolist() == got[name][0]["user_id"].tolist()


# --- helpers ------------------------------------------------------------------------------------


def failing_scorer(*args, **kwargs):
    """A group scorer whose every attempt fails, as an executor with a full disk would."""

    def score(events, shared):
        raise RuntimeError("disk full on this executor")

    return score


def run_engine(ws: Workspace, engine: str, spark, events) -> dict:
    if engine in ("local", "stream"):
        return score_local(ws, events, memory="table" if engine == "local" else "stream")
    from shopsight.behavior.spark import score_spark

    return score_spark(ws, events, spark=spark)


class WorkerKiller(threading.Thread):
    """Kills (SIGKILL) the first PySpark Python worker seen using CPU: a forked child of ``pyspark.daemon``.

    Only among this test process's own descendants (its JVM, the JVM's daemon, the daemon's
    workers): other programs on the machine may run Spark too.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.killed: list[int] = []
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(5)

    def run(self) -> None:
        seen: dict[int, int] = {}
        while not self._done.is_set() and not self.killed:
            procs = _descendants(_processes(), os.getpid())
            daemons = {pid for pid, (ppid, cmd, _) in procs.items() if "pyspark.daemon" in cmd and "pyspark.daemon" not in procs.get(ppid, (0, "", 0))[1]}
            for pid, (ppid, cmd, cpu) in procs.items():
                if ppid in daemons:
                    if pid in seen and cpu > seen[pid]:  # busy: running a task now
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                        break
                    seen[pid] = cpu
            time.sleep(0.2)


def _descendants(procs: dict[int, tuple[int, str, int]], root: int) -> dict[int, tuple[int, str, int]]:
    """The processes started (directly or not) by ``root``."""
    mine, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier and pid not in mine}
        mine |= frontier
    return {pid: procs[pid] for pid in mine}


def _processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command line, CPU ticks used) for this machine's processes."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), cmd, int(fields[11]) + int(fields[12]))
    return out


def test_the_cli_names_a_bad_events_path_in_one_line(shop, both, tmp_path):
    from typer.testing import CliRunner

    from shopsight.cli import app

    before = published_state(shop)
    result = CliRunner().invoke(app, ["score", "--workspace", str(shop.root), "--events", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "Error:" in result.output and "missing: no such file or folder" in result.output.replace("\n", "")
    bad_engine = CliRunner().invoke(app, ["score", "--workspace", str(shop.root), "--engine", "dask"])
    assert bad_engine.exit_code == 2 and "unknown engine 'dask'" in bad_engine.output
    assert published_state(shop) == before


# --- training on a sample of users drawn on Spark ----------------------------------------------


def test_a_spark_sample_holds_every_event_of_its_users_and_trains_as_they_do_locally(shop, both, spark, tmp_path):
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings
    from shopsight.behavior.spark import read_sample, sample_users

    ws = Workspace(tmp_path / "ws3")
    shutil.copytree(shop.root, ws.root, ignore=shutil.ignore_patterns("scores", "models"))
    folder = sample_users(ws, 300, spark=spark, seed=3)
    assert folder.parent.name == "sample-300-seed3"
    sample = read_sample(folder)
    users = sorted(sample["user_id"].unique())
    assert len(users) == 300
    assert sorted(read_sample(sample_users(ws, 300, spark=spark, seed=3))["user_id"].unique()) == users  # deterministic
    assert sorted(read_sample(sample_users(ws, 300, spark=spark, seed=4))["user_id"].unique()) != users
    full = ws.load_events()
    mine = full[full["user_id"].isin(users)].reset_index(drop=True)
    pd.testing.assert_frame_equal(sample[list(mine.columns)], mine, check_dtype=False)

    settings = TrainSettings(epochs=2, hidden=16, emb_dim=8, max_len=32, max_seconds=30)
    on_spark = train_model(ws, "churn", events=sample, settings=settings, card_extra={"training_sample": {"users": 300}})
    local = train_model(ws, "churn", events=mine, settings=settings)
    assert on_spark["card"]["training_sample"] == {"users": 300}
    assert on_spark["card"]["split"] == local["card"]["split"]  # the same time-based split
    assert on_spark["card"]["metrics"] == local["card"]["metrics"]
    with pytest.raises(ScoringError, match="only 2,000 users"):
        sample_users(ws, 5000, spark=spark)
