"""`shopsight score --engine spark`: every user's features and scores on PySpark, with the local engine's code.

Spark does the data movement only: it reads the Parquet shards, finds the whole table's "as of"
time and user count, hashes users into groups, and finds which accounts share a specific device
or IP (the one rule that reads other accounts). Each group's events then go to
``behavior.scoring.score_group`` in an executor (``cogroup(...).applyInPandas``), the function
the local engine runs, and the wide result is split into one table per model, written in the
run's staging folder and published as the local engine's are. Nothing else is re-implemented.

Local mode needs only Java (17+) and the ``pyspark`` package; ``--master URL`` (or
``SPARK_MASTER``) runs on a cluster whose executors have this package and the same Python
(``PYSPARK_PYTHON``) and can read the events and the workspace paths.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import pyarrow as pa

from shopsight.behavior.scoring import (
    CANONICAL_COLUMNS,
    FEATURE_PART,
    SCORE_PART,
    SEP,
    ScoreRun,
    ScoringError,
    ScoringModels,
    canonical_group,
    check_shards,
    end_of,
    event_files,
    normalize_wide,
    score_group,
)
from shopsight.behavior.scoring import _source
from shopsight.behavior.workspace import Workspace

DEFAULT_MASTER = "local[2]"
TASK_RETRIES = 4  # attempts per task, local mode too: a lost Python worker is retried, not fatal
BUCKET = "_bucket"


def spark_session(master: str | None = None, *, app: str = "shopsight", conf: dict[str, str] | None = None) -> Any:
    """A SparkSession for scoring: UTC, Parquet nanosecond times read as numbers, loopback-only in local mode.

    ``master``: a Spark master URL; default ``$SPARK_MASTER``, else ``local[2]``. A ``local[N]``
    master becomes ``local[N,4]`` so that a task whose Python worker dies is tried again.

    Raises:
        ScoringError: pyspark is not installed, or Java is missing.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ScoringError("the Spark engine needs pyspark: `pip install 'pyspark>=4.0,<4.4'` (or use --engine local)") from exc
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ScoringError("the Spark engine needs Java 17 or newer on PATH (Debian: `apt-get install openjdk-17-jre-headless`), or use --engine local")
    master = master or os.environ.get("SPARK_MASTER") or DEFAULT_MASTER
    m = re.fullmatch(r"local\[(\d+|\*)\]", master)
    if m:
        master = f"local[{m.group(1)},{TASK_RETRIES}]"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this interpreter (and its packages)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # every port the JVM opens on loopback, not the host's address
    builder = (
        SparkSession.builder.master(master).appName(app)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")  # pandas writes ns times; Spark reads them only as numbers
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # UTC-adjusted, as pandas writes them
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.task.maxFailures", str(TASK_RETRIES))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


FILE_ORDER = ("user_id", "ts", "_file", "_row")  # Workspace.load_events' order: by user and time, ties in file then row order


def read_events(spark: Any, files: list[Path], *, positions: bool = False) -> Any:
    """The shards as one Spark DataFrame of the canonical columns they have, ``ts`` as int64 nanoseconds.

    ``positions``: add ``_file`` (the file's place in ``files``) and ``_row`` (the row's in its
    file), so that a group can be put in the order the local engine reads (:data:`FILE_ORDER`).

    Raises:
        ScoringError: from :func:`behavior.scoring.check_shards` (unreadable shard, missing column,
            two shards with different types), naming the files.
    """
    from pyspark.sql import functions as F

    schema = check_shards(files)
    df = spark.read.parquet(*[str(f) for f in files])
    extra = []
    if positions:
        rank = F.create_map(*[x for i, f in enumerate(files) for x in (F.lit(Path(f).resolve().as_uri()), F.lit(i))])
        path = F.col("_metadata.file_path")
        extra = [F.coalesce(rank[path], rank[F.regexp_replace(path, "^file:/+", "file:///")]).alias("_file"),
                 F.col("_metadata.row_index").alias("_row")]
    df = df.select(*[c for c in CANONICAL_COLUMNS if c in schema.names], *extra)
    ts_type = schema.field("ts").type
    if pa.types.is_timestamp(ts_type) and ts_type.unit == "ns":
        pass  # read as int64 nanoseconds (spark.sql.legacy.parquet.nanosAsLong)
    elif pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type):
        df = df.withColumn("ts", F.unix_micros(F.col("ts").cast("timestamp")) * F.lit(1000))
    else:
        raise ScoringError(f"column 'ts' of {files[0]} is {ts_type}, not a timestamp: ingest the source with `shopsight ingest`, which parses times")
    return df


def score_spark(
    ws: Workspace,
    events: str | Path | None = None,
    *,
    master: str | None = None,
    spark: Any = None,
    users_per_group: int = 5000,
    threads: int = 1,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every user on Spark and publish the tables in ``ws`` (see the module docstring).

    Args:
        ws: the workspace whose latest intent, churn and risk models score, and where the tables go.
        events: a Parquet file, folder or glob (default: the workspace's events).
        master: Spark master URL (default ``$SPARK_MASTER``, else ``local[2]``); ignored with ``spark``.
        spark: a running SparkSession to use (tests share one).
        users_per_group: users per ``score_group`` call in an executor (its memory: their events).
        threads: torch threads per Python worker.
        report: called with each step's name (the CLI shows them).

    Returns:
        The published run's manifest (``scores/current.json``).

    Raises:
        ScoringError: bad events path or shard; the Spark job failed (after its retries). Nothing is published.
    """
    say = report or (lambda step: None)
    models = ScoringModels.load(ws)
    files = event_files(ws, events)
    spark = spark or spark_session(master)
    from pyspark.sql import functions as F

    df = read_events(spark, files)
    say("counting users")
    stats = _run(lambda: df.agg(F.max("ts").alias("ts"), F.countDistinct("user_id").alias("users"),
                                F.sum(F.col("user_id").isNull().cast("long")).alias("no_user")).collect()[0], files)
    if not stats["users"]:
        raise ScoringError(f"no events to score in {events or ws.root}")
    if stats["no_user"]:
        raise ScoringError(f"{stats['no_user']:,} events have no user_id in {events or ws.root}: ingest them through `shopsight ingest`, which rejects them")
    n_users = int(stats["users"])
    asof = end_of(pd.Timestamp(int(stats["ts"]), unit="ns", tz="UTC"))
    n_groups = max(1, math.ceil(n_users / max(users_per_group, 1)))
    thresholds = models.risk_thresholds
    shared = _shared_identifiers(df, n_users, n_groups, thresholds)
    df = df.withColumn(BUCKET, _bucket_of(n_groups))

    sample = _sample_output(df, models, asof, thresholds)
    out_schema = _spark_schema(spark, sample)
    columns = list(sample.columns)
    score = _group_scorer(models, asof, thresholds, columns, threads)
    wide = df.groupBy(BUCKET).cogroup(shared.groupBy(BUCKET)).applyInPandas(score, out_schema)

    run = ScoreRun.start(ws, models.refs, "spark")
    run.extra = {"master": spark.sparkContext.master, "groups": n_groups}
    try:
        say("scoring users")
        wide_dir = run.staging / "_wide"
        _run(lambda: wide.write.mode("errorifexists").parquet(str(wide_dir)), files)
        say("writing tables")
        staged = spark.read.parquet(str(wide_dir))
        for name, ref in models.refs.items():
            for kind, tag in ((SCORE_PART, "s"), (FEATURE_PART, "f")):
                prefix = f"{name}{SEP}{tag}{SEP}"
                cols = [F.col("user_id")] + [F.col(f"`{c}`").alias(c[len(prefix):]) for c in columns if c.startswith(prefix)]
                target = run.table_dir(name, kind)
                _run(lambda: staged.select(*cols).write.parquet(str(target)), files)
        shutil.rmtree(wide_dir)
        return run.publish(users=n_users, asof=asof, source=_source(ws, events, files))
    except BaseException:
        run.abandon()
        raise


def _bucket_of(n_groups: int) -> Any:
    """The group a user's rows go to: a hash of the id (the same for the events and the identifiers)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64("user_id"), F.lit(n_groups))


def _shared_identifiers(df: Any, n_users: int, n_groups: int, thresholds: Any) -> Any:
    """Per group of users: each specific device/IP one of its users has, with every user holding it.

    Columns ``_bucket, col, value, holders``. Specific = held by 2..``common_cap`` users, as
    ``linked_accounts`` decides; a common identifier ("mobile") is dropped before any list is built.
    """
    from pyspark.sql import functions as F

    from shopsight.behavior.models.rules import LINK_COLUMNS, common_cap

    cap = common_cap(thresholds, n_users)
    parts = [df.where(F.col(c).isNotNull()).select("user_id", F.lit(c).alias("col"), F.col(c).alias("value"))
             for c in LINK_COLUMNS if c in df.columns]
    if not parts:
        return df.sparkSession.createDataFrame([], f"{BUCKET} long, col string, value string, holders array<string>")
    ids = parts[0]
    for p in parts[1:]:
        ids = ids.unionByName(p)
    ids = ids.distinct().withColumn(BUCKET, _bucket_of(n_groups))
    counts = ids.groupBy("col", "value").agg(F.count("*").alias("n")).where((F.col("n") > 1) & (F.col("n") <= cap))
    specific = ids.join(counts.select("col", "value"), ["col", "value"])
    holders = specific.groupBy("col", "value").agg(F.sort_array(F.collect_list("user_id")).alias("holders"))
    return specific.select(BUCKET, "col", "value").distinct().join(holders, ["col", "value"]).select(BUCKET, "col", "value", "holders")


def _group_scorer(models: ScoringModels, asof: pd.Timestamp, thresholds: Any, columns: list[str], threads: int) -> Callable[..., pd.DataFrame]:
    """The function each executor runs on one group: its events and its shared identifiers in, wide rows out."""

    def score(events: pd.DataFrame, shared: pd.DataFrame) -> pd.DataFrame:
        import torch

        from shopsight.behavior.models.rules import linked_accounts_shared

        torch.set_num_threads(threads)
        if events.empty:
            return pd.DataFrame({c: [] for c in columns})
        holders = {(str(r.col), str(r.value)): list(r.holders) for r in shared.itertuples(index=False)}
        wide = score_group(models, events.drop(columns=[BUCKET]), asof, lambda group: linked_accounts_shared(group, holders, thresholds))
        missing = [c for c in columns if c not in wide.columns]
        if missing:  # a model added a column the schema (from the driver's sample) lacks: fail loudly, not silently
            raise ScoringError(f"a group's scores lack the columns {missing}: the models' output changed between users")
        return wide[columns]

    return score


def _sample_output(df: Any, models: ScoringModels, asof: pd.Timestamp, thresholds: Any) -> pd.DataFrame:
    """``score_group`` on a few users' events, on the driver: what the output columns and their types are."""
    from pyspark.sql import functions as F

    from shopsight.behavior.models.rules import _linked_accounts_for

    few = [r["user_id"] for r in df.select("user_id").distinct().orderBy("user_id").limit(20).collect()]
    rows = df.where(F.col("user_id").isin(few)).drop(BUCKET).toPandas()
    return normalize_wide(score_group(models, rows, asof, lambda group: _linked_accounts_for(group, group, thresholds)))


def _spark_schema(spark: Any, sample: pd.DataFrame) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.Schema.from_pandas(sample, preserve_index=False))


def _run(action: Callable[[], Any], files: list[Path]) -> Any:
    """Run a Spark action; a failed job becomes a ScoringError naming the shard when Spark names one."""
    try:
        return action()
    except ScoringError:
        raise
    except Exception as exc:  # Py4JJavaError, PythonException, AnalysisException …: Spark's own classes
        text = str(exc)
        named = next((str(f) for f in files if str(f) in text or f.name in text), None)
        inner = re.search(r"ScoringError: ([^\n]+)", text)
        if inner:
            raise ScoringError(inner.group(1)) from exc
        # the executor's own exception (the last "SomethingError: why" line of its traceback), else Spark's first line
        raised = re.findall(r"^\s*((?:[\w.]+\.)?\w+(?:Error|Exception|Exit): .+)$", text, re.M)
        first = raised[-1].strip() if raised else next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        where = f" while reading {named}" if named else ""
        raise ScoringError(f"the Spark job failed{where} after {TASK_RETRIES} attempts per task: {first[:400]}; "
                           "nothing was published (the previous scores stay current) — fix the cause and run `shopsight score` again") from exc


def sample_users(
    ws: Workspace,
    n_users: int,
    events: str | Path | None = None,
    *,
    seed: int = 0,
    master: str | None = None,
    spark: Any = None,
) -> Path:
    """Write every event of ``n_users`` users drawn on Spark to Parquet shards in ``ws``; return their folder.

    The draw is deterministic: the users with the smallest hash of (id, ``seed``). Each user
    keeps all of their events, so the models' time-based split (cutoffs from the events' time
    span) and their per-user labels work on the sample as on the whole table. The folder,
    ``training/sample-<n>-seed<seed>/``, is written beside and renamed into place when complete.

    Raises:
        ScoringError: bad events path or shard; fewer users than asked; the Spark job failed.
    """
    from pyspark.sql import functions as F

    from shopsight.behavior.workspace import staging_folder, swap_in_folder

    files = event_files(ws, events)
    spark = spark or spark_session(master)
    df = read_events(spark, files, positions=True)
    users = df.select("user_id").distinct().withColumn("_h", F.xxhash64("user_id", F.lit(seed)))
    chosen = users.orderBy("_h", "user_id").limit(n_users).select("user_id")
    have = int(_run(lambda: chosen.count(), files))
    if have < n_users:
        raise ScoringError(f"--sample {n_users:,}: the events hold only {have:,} users; ask for at most that many")
    target = ws.root / "training" / f"sample-{n_users}-seed{seed}"
    staging = staging_folder(target)
    try:
        sample = df.join(F.broadcast(chosen), "user_id") if n_users <= 1_000_000 else df.join(chosen, "user_id")
        # written as a timestamp, so the shards read as events anywhere (read_events refuses an integer ts)
        sample = sample.withColumn("ts", F.timestamp_micros(F.floor(F.col("ts") / F.lit(1000)).cast("long")))
        _run(lambda: sample.repartition(max(1, math.ceil(n_users / 50_000)), "user_id").write.mode("overwrite").parquet(str(staging / "events")), files)
        swap_in_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "events"


def read_sample(folder: Path) -> pd.DataFrame:
    """A sample's shards (:func:`sample_users`) as the canonical event table, in ``load_events``' order."""
    import pyarrow.parquet as pq

    from shopsight.behavior.scoring import canonical_group

    parts = sorted(folder.glob("*.parquet"))
    if not parts:
        raise ScoringError(f"{folder} holds no sample shards: draw it again with `shopsight train --engine spark --sample N`")
    table = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    return canonical_group(table, order=FILE_ORDER)


TABLE_MODELS = ("churn", "intent", "risk")


def build_training_table(
    ws: Workspace,
    model: Any,
    events: str | Path | None = None,
    *,
    master: str | None = None,
    spark: Any = None,
    users_per_group: int = 5000,
    name: str | None = None,
    labels: pd.DataFrame | None = None,
) -> Path:
    """Build ``model``'s training table (its train / validation / test rows) on Spark; publish it in ``ws``; return its folder.

    Spark computes what the model learns from the whole table before any row (the split's times,
    the vocabulary's counts and price quantiles, the share categories and devices, which users
    validate, who shares a device or IP), then runs the model's own per-user code on each group
    of users' events (``applyInPandas``), in ``Workspace.load_events``' order:
    ``ChurnModel.training_rows``; ``IntentModel.user_training_rows`` and
    ``session_training_rows`` (two tables, ``users/`` and ``sessions/``: one per net; which
    sessions train and validate is then decided over the whole table, ``session_split_of``);
    ``RiskModel.training_rows`` (the linked-accounts rule from a join, as ``score_spark``; the
    folds of the cross-fitted nets drawn over the whole table, ``fold_draw``). ``labels``: the
    ground truth risk learns from (``user_id``, ``is_fraud``). The rows are written as Parquet
    shards partitioned by split in a staging folder beside ``training/<name>/`` (default
    ``<model>-table``) with ``table.json``, and renamed into place when complete: a failed build
    publishes nothing and leaves the previous table.

    Raises:
        ScoringError: bad events path or shard; not enough history; the Spark job failed.
    """
    from pyspark.sql import functions as F

    from shopsight.behavior.models.common import ModelError
    from shopsight.behavior.models.streaming import MANIFEST, TABLE_FORMAT, TrainingTable
    from shopsight.behavior.workspace import staging_folder, swap_in_folder

    if getattr(model, "name", None) not in TABLE_MODELS:
        raise ScoringError(f"a training table is built for the {', '.join(TABLE_MODELS)} models, not '{getattr(model, 'name', model)}'")
    files = event_files(ws, events)
    spark = spark or spark_session(master)
    df = read_events(spark, files, positions=True)
    stats = _run(lambda: df.agg(F.min("ts").alias("first"), F.max("ts").alias("last"), F.countDistinct("user_id").alias("users"),
                                F.sum(F.col("user_id").isNull().cast("long")).alias("no_user")).collect()[0], files)
    if not stats["users"]:
        raise ScoringError(f"no events to train on in {events or ws.root}")
    if stats["no_user"]:
        raise ScoringError(f"{stats['no_user']:,} events have no user_id in {events or ws.root}: ingest them through `shopsight ingest`")
    ns = lambda v: pd.Timestamp(int(v), unit="ns", tz="UTC")  # noqa: E731
    first, last = ns(stats["first"]), ns(stats["last"])
    n_users = int(stats["users"])
    job = _TableJob(spark, df, files, first, last, n_users, max(1, math.ceil(n_users / max(users_per_group, 1))))
    target = ws.root / "training" / (name or f"{model.name}-table")
    staging = staging_folder(target)
    try:
        try:
            build = {"churn": _churn_table, "intent": _intent_table, "risk": _risk_table}[model.name]
            parts = build(job, model, staging, labels) if model.name == "risk" else build(job, model, staging)
        except ModelError as exc:
            raise ScoringError(str(exc)) from exc
        common = {
            "format": TABLE_FORMAT, "model": model.name, "params": model.table_params(),
            "first_event": first.isoformat(), "last_event": last.isoformat(), "scored_asof": end_of(last).isoformat(),
            "users": n_users, "source": _source(ws, events, files), "engine": {"master": spark.sparkContext.master, "groups": job.n_groups},
            "built": pd.Timestamp.now(tz="UTC").isoformat(),
        }
        for part, manifest in parts.items():
            folder = staging / part if part else staging
            (folder / MANIFEST).write_text(json.dumps({**common, **manifest}, indent=2, default=str))
            TrainingTable.open(folder)  # what a reader will check, before anyone can read it
        swap_in_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


class _TableJob:
    """What every model's table build shares: the events on Spark, their span, the groups, and the steps they all take."""

    def __init__(self, spark: Any, df: Any, files: list[Path], first: pd.Timestamp, last: pd.Timestamp, n_users: int, n_groups: int) -> None:
        self.spark, self.df, self.files = spark, df, files
        self.first, self.last, self.n_users, self.n_groups = first, last, n_users, n_groups

    def ranked(self, frame: Any, column: str) -> pd.Series:
        """``frame[column].value_counts()`` of the whole table: first appearance in load_events' order breaks count ties."""
        from pyspark.sql import functions as F

        order = F.struct("user_id", "ts", "_file", "_row")
        rows = _run(lambda: frame.where(F.col(column).isNotNull()).groupBy(column)
                    .agg(F.count("*").alias("n"), F.min(order).alias("first")).collect(), self.files)
        rows = sorted(rows, key=lambda r: (-r["n"], tuple(r["first"])))
        return pd.Series([r["n"] for r in rows], index=[str(r[column]) for r in rows], dtype="int64")

    def vocabulary(self, before: Any) -> tuple[dict[str, Any], pd.Series]:
        """``fit_vocab`` of the events in ``before``, and their categories' counts (``value_counts``' order)."""
        from pyspark.sql import functions as F

        from shopsight.behavior.models.common import PRICE_QUANTILES, quantiles_from_counts, vocab_from

        event_types = [r["event"] for r in _run(lambda: before.where(F.col("event").isNotNull()).select("event").distinct().collect(), self.files)]
        prices = _run(lambda: before.where(F.col("price").isNotNull() & ~F.isnan(F.col("price").cast("double")))
                      .groupBy(F.col("price").cast("double").alias("p")).count().orderBy("p").toPandas(), self.files)
        qs = quantiles_from_counts(prices["p"].to_numpy(), prices["count"].to_numpy(), PRICE_QUANTILES) if len(prices) else []
        counts = self.ranked(before, "category")
        return vocab_from(event_types, counts, qs), counts

    def top_categories(self, before: Any, counts: pd.Series, k: int) -> list[str]:
        from pyspark.sql import functions as F

        from shopsight.behavior.features import top_categories_from

        return top_categories_from(self.ranked(before.where(F.col("event") == "purchase"), "category"), lambda: counts, k)

    def probe(self) -> pd.DataFrame:
        """A few users' events on the driver (``load_events``' order): what the feature columns are."""
        from pyspark.sql import functions as F

        ids = [r["user_id"] for r in self.df.select("user_id").distinct().orderBy("user_id").limit(20).collect()]
        return canonical_group(self.df.where(F.col("user_id").isin(ids)).toPandas(), order=FILE_ORDER)

    def bucketed(self, frame: Any) -> Any:
        return frame.withColumn(BUCKET, _bucket_of(self.n_groups))

    def write(self, table: Any, folder: Path, *, partitioned: bool = True) -> dict[str, int]:
        """Write ``table``'s rows (partitioned by split) to ``folder``; the rows per split."""
        writer = table.write.partitionBy("split") if partitioned else table.write
        _run(lambda: writer.mode("overwrite").parquet(str(folder)), self.files)
        if not partitioned:
            return {}
        return {p.name[len("split="):]: sum(pq_rows(f) for f in p.glob("*.parquet")) for p in sorted(folder.glob("split=*"))}


def _group_rows(rows_of: Callable[[pd.DataFrame], pd.DataFrame], drop: Sequence[str] = ()) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The function an executor runs on one group's events: ``load_events``' order, the model's rows, Spark-safe text."""

    def rows(pdf: pd.DataFrame) -> pd.DataFrame:
        import torch

        torch.set_num_threads(1)
        out = rows_of(pdf, canonical_group(pdf.drop(columns=[BUCKET, *drop]), order=FILE_ORDER))
        for col in out.columns:  # concat leaves Arrow-backed text in chunks, which Spark's serializer refuses
            if col in ("user_id", "split", "owner"):
                out[col] = out[col].to_numpy(dtype=object)
        return out

    return rows


def _schema(names: Sequence[str], width: int, *, extra: str = "") -> str:
    from shopsight.behavior.models.streaming import feature_column, token_column

    return ("user_id string, " + extra + "split string, snapshot long, " + ", ".join(f"{feature_column(i)} double" for i in range(len(names)))
            + ", " + ", ".join(f"{token_column(j)} long" for j in range(width)) + ", length long, y long")


def _churn_table(job: _TableJob, model: Any, staging: Path) -> dict[str, dict[str, Any]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from shopsight.behavior.features import rfm_features
    from shopsight.behavior.models.churn import validation_draw
    from shopsight.behavior.models.streaming import ROWS

    df, files = job.df, job.files
    C, asofs = model.split_times(job.first, job.last)
    before = df.where(F.col("ts") < F.lit(C.value))
    model.vocab_, counts = job.vocabulary(before)
    model.categories_ = job.top_categories(before, counts, model.n_categories)

    # which users validate: one seeded draw over the sorted users of every training snapshot
    lo = [(F.col("ts") >= F.lit((a - pd.Timedelta(days=model.active_days)).value)) if model.active_days else F.lit(True) for a in asofs]
    seen = None
    for a, cond in zip(asofs, lo):
        c = (F.col("ts") < F.lit(a.value)) & cond
        seen = c if seen is None else (seen | c)
    snap_users = df.where(seen).select("user_id").distinct()
    n_snap = int(_run(lambda: snap_users.count(), files))
    ranked_users = snap_users.withColumn("_pos", F.row_number().over(Window.orderBy("user_id")) - 1)
    frac, seed = model.val_user_fraction, model.settings.seed

    def draw(batches: Any) -> Any:
        for b in batches:
            yield pd.DataFrame({"user_id": b["user_id"].to_numpy(dtype=object), "_val": validation_draw(b["_pos"].to_numpy(), n_snap, frac, seed=seed)})

    val = ranked_users.mapInPandas(draw, "user_id string, _val boolean")
    tagged = job.bucketed(df.join(val, "user_id", "left").fillna({"_val": False}))
    names = list(rfm_features(job.probe(), end_of(job.last), categories=model.categories_).columns)  # the columns every snapshot has
    width = model.settings.max_len if model.use_sequence else 1  # tokenize_events' width (an empty sentence: one pad)

    def rows_of(pdf: pd.DataFrame, group: pd.DataFrame) -> pd.DataFrame:
        return model.training_rows(group, asofs, C, pdf.loc[pdf["_val"].astype(bool), "user_id"].unique(), names)

    table = tagged.groupBy(BUCKET).applyInPandas(_group_rows(rows_of, ["_val"]), _schema(names, width))
    n_rows = job.write(table, staging / ROWS)
    return {"": {"features": names, "token_width": width, "vocab": model.vocab_, "categories": model.categories_,
                 "cutoff": C.isoformat(), "train_asofs": [a.isoformat() for a in asofs], "snapshot_users": n_snap,
                 "rows": {sp: n_rows.get(sp, 0) for sp in ("train", "validation", "test")}}}


def _intent_table(job: _TableJob, model: Any, staging: Path) -> dict[str, dict[str, Any]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from shopsight.behavior.models.intent import session_feature_names, user_intent_features
    from shopsight.behavior.models.streaming import ROWS

    df = job.df
    C, asofs = model.split_times(job.first, job.last)
    before = df.where(F.col("ts") < F.lit(C.value))
    model.vocab_, counts = job.vocabulary(before)
    model.categories_ = job.top_categories(before, counts, model.n_categories)
    model.devices_ = sorted(job.ranked(before, "device").index[:6].tolist()) if "device" in df.columns else []  # _top_values
    tagged = job.bucketed(df)
    learned = {"vocab": model.vocab_, "categories": model.categories_, "devices": model.devices_, "cutoff": C.isoformat(),
               "train_asofs": [a.isoformat() for a in asofs]}

    user_names = list(user_intent_features(job.probe(), end_of(job.last), model.categories_).columns)
    user_width = model.settings.max_len if model.use_sequence else 1
    users = tagged.groupBy(BUCKET).applyInPandas(_group_rows(lambda pdf, g: model.user_training_rows(g, asofs, C, user_names)),
                                                 _schema(user_names, user_width))
    n_user = job.write(users, staging / "users" / ROWS)

    names = session_feature_names(model.devices_)
    width = model.session_max_len if model.use_sequence else 1
    sessions = tagged.groupBy(BUCKET).applyInPandas(_group_rows(lambda pdf, g: model.session_training_rows(g, C, names)),
                                                    _schema(names, width, extra="owner string, "))
    raw = staging / "_sessions"
    job.write(sessions, raw, partitioned=False)
    rows = job.spark.read.parquet(str(raw))
    candidates = rows.where(F.col("split") == "candidate")
    n_candidates = int(_run(lambda: candidates.count(), job.files))
    n_keep, n_val = model.session_split_of(n_candidates)
    latest = [F.col("snapshot").desc(), F.col("owner").desc(), F.col("user_id").desc()]  # session_examples' order, reversed
    kept = candidates.orderBy(*latest).limit(n_keep)
    kept = kept.withColumn("split", F.when(F.row_number().over(Window.orderBy(*latest)) <= n_val, "validation").otherwise("train"))
    split = kept.unionByName(rows.where(F.col("split") == "test")).drop("owner")
    n_session = job.write(split, staging / "sessions" / ROWS)
    shutil.rmtree(raw)
    return {
        "users": {"features": user_names, "token_width": user_width, **learned, "rows": {sp: n_user.get(sp, 0) for sp in ("train", "validation", "test")}},
        "sessions": {"features": names, "token_width": width, **learned, "candidates_before_cutoff": n_candidates,
                     "rows": {sp: n_session.get(sp, 0) for sp in ("train", "validation", "test")}},
    }


def _risk_table(job: _TableJob, model: Any, staging: Path, labels: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from shopsight.behavior.models.risk import fold_draw, risk_features
    from shopsight.behavior.models.rules import linked_accounts_shared
    from shopsight.behavior.models.streaming import ROWS

    df, files = job.df, job.files
    C = model.split_times(job.first, job.last)
    asof = end_of(job.last)
    before = df.where(F.col("ts") < F.lit(C.value))
    n_before = int(_run(lambda: before.select("user_id").distinct().count(), files))
    if n_before < 20:
        raise ScoringError(f"only {n_before} accounts were seen before the cutoff {C}: choose a later cutoff")
    model.vocab_, _ = job.vocabulary(before)
    thresholds = model.thresholds
    # who shares a specific device or IP, before the cutoff (the training accounts' rule) and over every event (the test accounts')
    shared = (_shared_identifiers(before, n_before, job.n_groups, thresholds).withColumn("_scope", F.lit("before"))
              .unionByName(_shared_identifiers(df, job.n_users, job.n_groups, thresholds).withColumn("_scope", F.lit("all"))))
    names = list(risk_features(job.probe(), asof, thresholds=thresholds).columns)
    width = model.settings.max_len if model.use_sequence else 1
    has_labels = labels is not None and "is_fraud" in labels.columns
    truth = labels[["user_id", "is_fraud"]].copy() if has_labels else None
    schema = _schema(names, width)

    def rows(events: pd.DataFrame, ids: pd.DataFrame) -> pd.DataFrame:
        import torch

        torch.set_num_threads(1)
        if events.empty:
            return pd.DataFrame({f.split(" ")[0]: [] for f in schema.split(", ")})
        holders = {scope: {(str(r.col), str(r.value)): list(r.holders) for r in part.itertuples(index=False)}
                   for scope, part in ids.groupby("_scope")} if len(ids) else {}
        group = canonical_group(events.drop(columns=[BUCKET]), order=FILE_ORDER)
        out = model.training_rows(group, C, asof, labels=truth, feature_names=names,
                                  linked_before=lambda g: linked_accounts_shared(g, holders.get("before", {}), thresholds),
                                  linked_all=lambda g: linked_accounts_shared(g, holders.get("all", {}), thresholds))
        for col in ("user_id", "split"):
            out[col] = out[col].to_numpy(dtype=object)
        return out

    table = job.bucketed(df).groupBy(BUCKET).cogroup(shared.groupBy(BUCKET)).applyInPandas(rows, schema)
    raw = staging / "_rows"
    job.write(table, raw, partitioned=False)
    built = job.spark.read.parquet(str(raw))
    train = built.where(F.col("split") == "train")
    frauds = int(_run(lambda: train.agg(F.sum("y")).collect()[0][0] or 0, files)) if has_labels else 0
    k_folds = min(model.n_folds, frauds) if frauds >= 2 else 0  # RiskModel._supervision
    if k_folds:  # the cross-fitted nets' folds: stratified_folds over the sorted training accounts
        n_train = int(_run(lambda: train.count(), files))
        counts = (n_train - frauds, frauds)
        placed = train.select("user_id", "y").withColumn("_pos", F.row_number().over(Window.partitionBy("y").orderBy("user_id")) - 1)
        seed = model.settings.seed

        def folds(batches: Any) -> Any:
            for b in batches:
                yield pd.DataFrame({"user_id": b["user_id"].to_numpy(dtype=object),
                                    "_fold": fold_draw(b["y"].to_numpy(), b["_pos"].to_numpy(), counts, k_folds, seed)})

        fold = placed.mapInPandas(folds, "user_id string, _fold long")
        train = train.join(fold, "user_id").withColumn("split", F.concat(F.lit("fold"), F.col("_fold").cast("string"))).drop("_fold")
    n_rows = job.write(train.unionByName(built.where(F.col("split") == "test")), staging / ROWS)
    shutil.rmtree(raw)
    splits = [f"fold{k}" for k in range(k_folds)] if k_folds else ["train"]
    return {"": {"features": names, "token_width": width, "vocab": model.vocab_, "cutoff": C.isoformat(), "labels": bool(has_labels),
                 "snapshot": "the account's first event time (ns)", "train_frauds": frauds if has_labels else None,
                 "rows": {sp: n_rows.get(sp, 0) for sp in [*splits, "test"]}}}


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)
