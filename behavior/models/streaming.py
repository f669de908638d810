"""Training a model from its training table in Parquet shards, a batch at a time (`shopsight train --engine spark`).

The table (built on Spark by ``behavior.spark.build_training_table``, with the model's own
per-user snapshot code) is a folder: ``table.json`` (what was built, from what, the split, the
vocabulary) and ``rows/split=train|validation|test/*.parquet``, one row per (snapshot, user):
``user_id, snapshot, x0..xk`` (the tabular features, named in the manifest), ``t0..tL`` (the
behaviour sentence's token ids, right-padded), ``length``, ``y``. Intent has two such tables
(``users/``, ``sessions/``: a session table's ``user_id`` is the session, ``snapshot`` its start);
risk's splits are its folds (``fold0..``) and ``test``, one row per account, ``snapshot`` its
first-seen time. The manifest's ``rows`` names the splits.

``fit_binary_streaming`` is ``common.fit_binary`` over that table: the scaler's statistics, the
base rate and the logistic warm start come from streaming passes first, then each epoch reads the
shards through a shuffle buffer. What it holds at once is one buffer of rows (``buffer_rows``,
plus one read batch), and the validation rows' logits and labels (two numbers per row) for the
calibration and threshold. With a buffer as large as the training split it takes the same steps
as ``fit_binary`` on the same rows (tested to float tolerance); a smaller buffer shuffles less
globally (shards in a seeded random order, rows within a buffer), so the net differs by shuffle
order only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from shopsight.behavior.models.common import (
    BestEpoch,
    Calibration,
    FitResult,
    ModelError,
    Progress,
    Sequences,
    TabularScaler,
    TrainSettings,
    _signed_log,
    seed_everything,
    warm_start,
)

TABLE_FORMAT = 1
MANIFEST = "table.json"
ROWS = "rows"
SPLITS = ("train", "validation", "test")
READ_ROWS = 8192  # rows per Parquet read batch
BUFFER_ROWS = 65_536  # rows in the shuffle buffer (each ~ 8 bytes x (max_len + features))


class TableError(ModelError):
    """A training table is missing, incomplete or does not match what reads it."""


def feature_column(i: int) -> str:
    """The Parquet column of the ``i``-th feature (names live in the manifest: categories may hold any character)."""
    return f"x{i}"


def token_column(j: int) -> str:
    """The Parquet column of the sentences' ``j``-th token (0 = oldest kept)."""
    return f"t{j}"


def table_rows(split: np.ndarray, snapshot: np.ndarray, users: Any, X: pd.DataFrame, seqs: Sequences, y: np.ndarray,
               feature_names: Sequence[str]) -> pd.DataFrame:
    """Rows of the training table: one per (snapshot, user), the features in ``feature_names``' order.

    Raises:
        TableError: ``X`` has a feature the table does not name (the model's features changed between users).
    """
    extra = [c for c in X.columns if c not in feature_names]
    if extra:
        raise TableError(f"the features {extra} are not in the training table's list {list(feature_names)}")
    out = {"user_id": pd.Index(users).astype(str).to_numpy(dtype=object), "split": np.asarray(split, dtype=object),
           "snapshot": np.asarray(snapshot, dtype="int64")}
    Xf = X.reindex(columns=list(feature_names))
    for i, name in enumerate(feature_names):
        out[feature_column(i)] = pd.to_numeric(Xf[name], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    tokens = np.ascontiguousarray(seqs.tokens, dtype="int64")
    for j in range(tokens.shape[1] if tokens.ndim == 2 else 0):  # one column per position: plain numbers every engine moves
        out[token_column(j)] = tokens[:, j]
    out["length"] = np.asarray(seqs.lengths, dtype="int64")
    out["y"] = np.asarray(y, dtype="int64")
    return pd.DataFrame(out)


# --- reading the table ----------------------------------------------------------------------


class TrainingTable:
    """A built training table, checked on open; reads its splits as Parquet batches, never whole.

    ``max_batch_rows`` / ``max_rows_held``: the most rows one read batch / the shuffle buffer held
    (what bounds memory; the tests measure it).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], files: dict[str, list[Path]]) -> None:
        self.folder = folder
        self.manifest = manifest
        self._files = files
        self.feature_names: list[str] = list(manifest["features"])
        self.token_width = int(manifest["token_width"])
        self.max_batch_rows = 0
        self.max_rows_held = 0

    @classmethod
    def open(cls, folder: str | Path) -> "TrainingTable":
        """Open and check a table: manifest, every split's shards, their columns and types, the row counts.

        Raises:
            TableError: naming the folder or shard and what is wrong.
        """
        folder = Path(folder)
        where = folder / MANIFEST
        if not where.is_file():
            raise TableError(f"no training table in {folder} (no {MANIFEST}): build it with `shopsight train --engine spark --sample N`")
        try:
            manifest = json.loads(where.read_text())
        except (OSError, ValueError) as exc:
            raise TableError(f"{where} is not a readable training table manifest ({exc}): build the table again") from exc
        if manifest.get("format") != TABLE_FORMAT:
            raise TableError(f"{where} is format {manifest.get('format')!r}; this code reads format {TABLE_FORMAT}: build the table again")
        expected = cls.schema(len(manifest["features"]), int(manifest["token_width"]))
        files: dict[str, list[Path]] = {}
        for split in manifest["rows"]:  # churn's and intent's train / validation / test; risk's fold0.. / test
            part = folder / ROWS / f"split={split}"
            found = sorted(part.glob("*.parquet")) if part.is_dir() else []
            want = int(manifest["rows"][split])
            if not found and want:
                raise TableError(f"the training table {folder} lacks its {split} shards ({part} holds no .parquet files): build it again")
            have = 0
            for f in found:
                try:
                    meta = pq.ParquetFile(f)
                except Exception as exc:  # pyarrow raises ArrowInvalid, OSError …
                    raise TableError(f"training shard {f} is unreadable ({exc}): build the table again") from exc
                schema = meta.schema_arrow
                for fld in expected:
                    if fld.name not in schema.names:
                        raise TableError(f"training shard {f} has no column '{fld.name}' (it has {schema.names}): "
                                         "it was not written by this table's build; build the table again")
                    got = schema.field(fld.name).type
                    if not _same_type(got, fld.type):
                        raise TableError(f"training shard {f}: column '{fld.name}' is {got}, the table's other shards have {fld.type}; build the table again")
                have += meta.metadata.num_rows
            if have != want:
                raise TableError(f"the training table {folder} has {have:,} {split} rows in its shards, its manifest says {want:,}: "
                                 "a shard is missing or extra; build the table again")
            files[split] = found
        return cls(folder, manifest, files)

    @staticmethod
    def schema(n_features: int, token_width: int) -> pa.Schema:
        return pa.schema([("user_id", pa.string()), ("snapshot", pa.int64()),
                          *[(feature_column(i), pa.float64()) for i in range(n_features)],
                          *[(token_column(j), pa.int64()) for j in range(token_width)], ("length", pa.int64()), ("y", pa.int64())])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["rows"])

    def rows(self, split: str | Sequence[str]) -> int:
        """Rows in a split, or in several (a sequence of split names: risk trains on all folds but one)."""
        return sum(int(self.manifest["rows"][s]) for s in _names(split))

    def files(self, split: str | Sequence[str]) -> list[Path]:
        return [f for s in _names(split) for f in self._files[s]]

    @property
    def x_columns(self) -> list[str]:
        return [feature_column(i) for i in range(len(self.feature_names))]

    def batches(self, split: str | Sequence[str], columns: Sequence[str] | None = None, *, read_rows: int = READ_ROWS,
                files: Sequence[Path] | None = None) -> Iterator[pa.RecordBatch]:
        """The split's (or splits') rows as record batches of at most ``read_rows``, shard by shard."""
        cols = list(columns) if columns is not None else ["user_id", *self.x_columns, *[token_column(j) for j in range(self.token_width)], "length", "y"]
        for f in (self.files(split) if files is None else files):
            try:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=read_rows, columns=cols):
                    self.max_batch_rows = max(self.max_batch_rows, batch.num_rows)
                    yield batch
            except TableError:
                raise
            except (OSError, pa.ArrowException) as exc:
                raise TableError(f"training shard {f} could not be read ({exc}): build the table again") from exc

    def features(self, batch: pa.RecordBatch) -> pd.DataFrame:
        """A batch's tabular features under their names (what ``TabularScaler`` takes)."""
        return pd.DataFrame({name: batch.column(c).to_numpy(zero_copy_only=False) for name, c in zip(self.feature_names, self.x_columns)})

    def tokens(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """A batch's sentences: tokens [n, max_len] and lengths [n]."""
        tok = np.column_stack([batch.column(token_column(j)).to_numpy() for j in range(self.token_width)]).astype("int64")
        return tok.reshape(batch.num_rows, self.token_width), batch.column("length").to_numpy().astype("int64")

    def frame(self, splits: Sequence[str], *, limit: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.Index]:
        """At most ``limit`` rows of ``splits`` in memory (every k-th row when there are more):
        (features, labels, which rows are validation rows, their users).

        For what needs rows at once (the baselines, the typical values): all the rows of a table that small.
        """
        total = sum(self.rows(s) for s in splits)
        stride = max(1, math.ceil(total / max(limit, 1)))
        parts, ys, vals, users = [], [], [], []
        seen = 0
        for split in splits:
            for batch in self.batches(split, ["user_id", *self.x_columns, "y"]):
                keep = np.flatnonzero((np.arange(seen, seen + batch.num_rows) % stride) == 0)
                seen += batch.num_rows
                b = batch.take(pa.array(keep))
                parts.append(self.features(b))
                ys.append(b.column("y").to_numpy())
                vals.append(np.full(b.num_rows, split == "validation"))
                users.append(b.column("user_id").to_numpy(zero_copy_only=False))
        X = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=self.feature_names, dtype="float64")
        return (X, np.concatenate(ys).astype("int64") if ys else np.zeros(0, "int64"),
                np.concatenate(vals) if vals else np.zeros(0, bool), pd.Index(np.concatenate(users) if users else [], name="user_id"))


def _names(split: str | Sequence[str]) -> list[str]:
    return [split] if isinstance(split, str) else list(split)


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_list(want) or pa.types.is_large_list(want):
        return (pa.types.is_list(got) or pa.types.is_large_list(got)) and got.value_type == want.value_type
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return got == want


# --- one streaming pass each: the scaler, the base rate, the warm start ---------------------


def scaler_from_table(table: TrainingTable, split: str | Sequence[str] = "train") -> TabularScaler:
    """``TabularScaler.fit`` over a split's rows in one pass (Chan's parallel mean/variance, missing values skipped)."""
    k = len(table.feature_names)
    n, mean, m2 = np.zeros(k), np.zeros(k), np.zeros(k)
    for batch in table.batches(split, table.x_columns):
        Z = _signed_log(table.features(batch).to_numpy(dtype="float64", na_value=np.nan))
        ok = ~np.isnan(Z)
        nb = ok.sum(axis=0).astype("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(nb > 0, np.nansum(Z, axis=0) / np.maximum(nb, 1), 0.0)
            m2b = np.nansum((Z - mb) ** 2, axis=0)
            tot = n + nb
            delta = mb - mean
            mean = np.where(tot > 0, mean + delta * nb / np.maximum(tot, 1), 0.0)
            m2 = m2 + m2b + delta ** 2 * n * nb / np.maximum(tot, 1)
        n = tot
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_out = np.where(n > 0, mean, np.nan)
        std = np.sqrt(np.where(n > 0, m2 / np.maximum(n, 1), np.nan))
    mean_out = np.where(np.isfinite(mean_out), mean_out, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
    return TabularScaler(columns=list(table.feature_names), mean=mean_out.tolist(), std=std.tolist())


def _xy_passes(table: TrainingTable, split: str | Sequence[str], scaler: TabularScaler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in table.batches(split, [*table.x_columns, "y"]):
        x = scaler.transform(table.features(batch)).astype("float64")
        yield torch.from_numpy(x), torch.from_numpy(batch.column("y").to_numpy().astype("float64"))


def logistic_fit_streaming(table: TrainingTable, split: str | Sequence[str], scaler: TabularScaler, n_rows: int) -> tuple[np.ndarray, float]:
    """The L2 logistic regression of ``common._logistic_fit`` (C = 1) by L-BFGS, one pass over the shards per evaluation.

    The objective is sklearn's (mean log loss + ||w||² / 2n, intercept free): the same optimum,
    reached to a tighter tolerance than sklearn's default, so the weights agree to its tolerance.
    """
    k = len(scaler.columns)
    params = torch.zeros(k + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=200, tolerance_grad=1e-8, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), dtype=torch.float64)
        for x, y in _xy_passes(table, split, scaler):
            z = x @ params[:k] + params[k]
            total = total + nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum")
        loss = total / n_rows + 0.5 * (params[:k] ** 2).sum() / n_rows
        loss.backward()
        return loss

    opt.step(closure)
    w = params.detach().numpy()
    return w[:k].astype("float32"), float(w[k])


# --- the training loop ----------------------------------------------------------------------


@dataclass
class StreamRecord:
    """How a streaming fit read its table (the model card reports it)."""

    read_rows: int
    buffer_rows: int
    max_batch_rows: int = 0
    max_rows_held: int = 0
    passes: int = 0
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, "int64"), repr=False)

    def to_card(self) -> dict[str, Any]:
        return {"read_rows": self.read_rows, "buffer_rows": self.buffer_rows, "max_rows_per_read": self.max_batch_rows,
                "max_rows_held": self.max_rows_held}


class ShuffledRows(torch.utils.data.IterableDataset):
    """A split's rows through a shuffle buffer, as training batches ``(tokens, lengths, x, y)`` (an IterableDataset).

    Each pass: the shards in a seeded random order (unless one buffer holds the whole split, where
    the order cannot matter), rows gathered into a buffer of ``buffer_rows``, permuted with
    ``generator`` (``torch.randperm``, as ``fit_binary``), cut into batches; a remainder shorter
    than a batch moves on to the next buffer, the last one ends the pass.
    """

    def __init__(self, table: TrainingTable, split: str | Sequence[str], scaler: Any, *, batch_size: int, buffer_rows: int,
                 read_rows: int, generator: torch.Generator, seed: int) -> None:
        self.table, self.split, self.scaler = table, split, scaler
        self.batch_size, self.buffer_rows, self.read_rows = batch_size, max(buffer_rows, batch_size), read_rows
        self.generator, self.seed, self.epoch = generator, seed, 0
        self.max_rows_held = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        files = self.table.files(self.split)
        if self.table.rows(self.split) > self.buffer_rows:
            files = [files[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(files))]
        self.epoch += 1
        held: list[tuple[np.ndarray, ...]] = []
        n_held = 0
        for batch in self.table.batches(self.split, read_rows=self.read_rows, files=files):
            tok, lens = self.table.tokens(batch)
            held.append((tok, lens, self.scaler.transform(self.table.features(batch)), batch.column("y").to_numpy().astype("float32")))
            n_held += batch.num_rows
            self.max_rows_held = max(self.max_rows_held, n_held)
            if n_held >= self.buffer_rows:
                rest = yield from self._drain(held, final=False)
                held, n_held = ([rest], len(rest[0])) if rest is not None else ([], 0)
        if n_held:
            yield from self._drain(held, final=True)

    def _drain(self, held: list[tuple[np.ndarray, ...]], *, final: bool) -> Any:
        tok, lens, x, y = (np.concatenate([h[i] for h in held]) for i in range(4))
        order = torch.randperm(len(y), generator=self.generator).numpy()
        n_full = len(y) if final else (len(y) // self.batch_size) * self.batch_size
        for i in range(0, n_full, self.batch_size):
            b = order[i : i + self.batch_size]
            yield torch.from_numpy(tok[b]), torch.from_numpy(lens[b]), torch.from_numpy(x[b]), torch.from_numpy(y[b])
        if n_full < len(y):
            b = order[n_full:]
            return tok[b], lens[b], x[b], y[b]
        return None


def predict_table(net: nn.Module, table: TrainingTable, split: str | Sequence[str], scaler: Any, *,
                  read_rows: int = READ_ROWS) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """The net's raw logits for every row of a split, read a batch at a time: (users, logits, labels)."""
    net.eval()
    users, logits, ys = [], [], []
    with torch.no_grad():
        for batch in table.batches(split, read_rows=read_rows):
            tok, lens = table.tokens(batch)
            x = scaler.transform(table.features(batch))
            logits.append(net(torch.from_numpy(tok), torch.from_numpy(lens), torch.from_numpy(x)).numpy().astype("float64"))
            ys.append(batch.column("y").to_numpy().astype("int64"))
            users.append(batch.column("user_id").to_numpy(zero_copy_only=False))
    if not logits:
        return pd.Index([], name="user_id"), np.zeros(0), np.zeros(0, "int64")
    return pd.Index(np.concatenate(users), name="user_id"), np.concatenate(logits), np.concatenate(ys)


def fit_binary_streaming(
    net: nn.Module,
    table: TrainingTable,
    scaler: Any,
    *,
    settings: TrainSettings | None = None,
    progress: Progress | None = None,
    buffer_rows: int = BUFFER_ROWS,
    read_rows: int = READ_ROWS,
    train: str | Sequence[str] = "train",
    validation: str | Sequence[str] = "validation",
) -> tuple[FitResult, StreamRecord]:
    """``common.fit_binary`` on the table's train rows, early-stopping and calibrating on its validation rows.

    ``train`` / ``validation``: the splits that train and validate (risk's fold nets: all folds
    but one, and that one). ``scaler``: a ``TabularScaler``, or anything whose
    ``transform(features)`` gives the net's inputs (risk adds its anomaly score first); the
    logistic warm start needs a ``TabularScaler``.

    Returns:
        (``FitResult``, ``StreamRecord``: how much it held at once, the validation labels aligned
        with ``FitResult.val_logits``). The best epoch's weights are loaded into ``net``.

    Raises:
        TableError: a split is empty, or a shard cannot be read.
    """
    s = settings or TrainSettings()
    n_tr, n_va = table.rows(train), table.rows(validation)
    if not n_tr or not n_va:
        raise ModelError(f"need both training and validation rows; got {n_va} validation of {n_tr + n_va}")
    seed_everything(s.seed, s.threads)
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    record = StreamRecord(read_rows=read_rows, buffer_rows=buffer_rows)
    pos_count = sum(int(b.column("y").to_numpy().sum()) for b in table.batches(train, ["y"]))
    pos = pos_count / n_tr
    loss_fn = nn.BCEWithLogitsLoss()

    def val_loss() -> float:
        net.eval()
        total = 0.0
        with torch.no_grad():
            for batch in table.batches(validation, read_rows=read_rows):
                tok, lens = table.tokens(batch)
                x = torch.from_numpy(scaler.transform(table.features(batch)))
                y = torch.from_numpy(batch.column("y").to_numpy().astype("float32"))
                total += float(nn.functional.binary_cross_entropy_with_logits(
                    net(torch.from_numpy(tok), torch.from_numpy(lens), x), y, reduction="sum"))
        return total / n_va

    linear = s.warm_start_linear and net.skip is not None and net.n_outputs == 1 and 0 < pos_count < n_tr
    warm_start(net, pos, logistic_fit_streaming(table, train, scaler, n_tr) if linear else None)
    opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(s.seed)
    epochs = BestEpoch(net, s, val_loss() if s.warm_start_linear else float("inf"), progress)
    rows = ShuffledRows(table, train, scaler, batch_size=s.batch_size, buffer_rows=buffer_rows, read_rows=read_rows,
                        generator=gen, seed=s.seed)
    epoch = 0
    for epoch in range(1, s.epochs + 1):
        net.train()
        total = 0.0
        for tok, lens, x, y in rows:
            opt.zero_grad()
            loss = loss_fn(net(tok, lens, x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(y)
        if epochs.stop_after(epoch, total / n_tr, val_loss()):
            break
    epochs.restore_best()
    _, val_logits, y_val = predict_table(net, table, validation, scaler, read_rows=read_rows)
    calibration = Calibration.fit(val_logits, y_val)
    record.y_val = y_val
    record.max_rows_held = rows.max_rows_held
    record.max_batch_rows = table.max_batch_rows
    if progress:
        progress("train", 1.0)
    return epochs.result(epoch, calibration, val_logits), record
