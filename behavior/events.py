"""The canonical event schema, and validation of raw tables into it.

Every adapter ends in :func:`validate_events`; nothing else decides what a valid event is.
Bad rows are never dropped silently: each is counted in an :class:`IngestReport` with its
reason and location and kept in ``report.rejected`` so the caller can store it.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REQUIRED_COLUMNS: tuple[str, ...] = (
    "user_id",
    "ts",
    "event",
    "item_id",
    "category",
    "price",
    "quantity",
    "session_id",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("device", "country", "payment", "order_id", "ip", "text")
# Columns a source must provide; the rest of REQUIRED_COLUMNS may be absent and are filled
# (item_id/category/price/quantity with nulls, session_id by sessionization).
MUST_PROVIDE: tuple[str, ...] = ("user_id", "ts", "event")

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "refund",
    "login",
    "review",
)

STRING_COLUMNS = ("user_id", "event", "item_id", "category", "session_id") + OPTIONAL_COLUMNS

# What each canonical column means, for the data dictionary (`shopsight mcp` serves it to client models).
COLUMN_MEANINGS: dict[str, str] = {
    "user_id": "the shopper's id (ids that were e-mails are stored as keyed pseudonyms)",
    "ts": "when the event happened, UTC",
    "event": "what the shopper did: " + ", ".join(EVENT_TYPES),
    "item_id": "the product's id (empty for searches and logins)",
    "category": "the product's category",
    "price": "unit price of the item, in the shop's currency",
    "quantity": "units in the event (carts, purchases, refunds)",
    "session_id": "the visit the event belongs to; a new session starts after 30 idle minutes unless the source has ids",
    "device": "mobile, desktop, tablet, … as the source names it",
    "country": "country code of the visit",
    "payment": "payment method at checkout",
    "order_id": "the order a purchase or refund belongs to",
    "ip": "the visitor's IP address, stored as a keyed pseudonym",
    "text": "free text the shopper wrote (searches, reviews), masked for personal data and cut to a bound",
}


class EventDataError(ValueError):
    """Input that cannot become canonical events; names the file, row and column."""

    def __init__(
        self,
        message: str,
        *,
        source: str,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.row = row
        self.column = column
        self.hint = hint
        where = source
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


@dataclass
class RejectedReason:
    """One kind of unusable row: how many, and where the first few are."""

    reason: str
    column: str | None
    count: int
    first_rows: list[int]


@dataclass
class IngestReport:
    """What validation did to a table: rows read, kept, and every row it did not keep."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    rejected_reasons: list[RejectedReason] = field(default_factory=list)
    naive_timestamps_as: str | None = None
    rejected: pd.DataFrame | None = None  # the raw rejected rows with a `reason` column
    # Rows equal in identity (user, time, event, item, session, order) to events the workspace
    # already holds from earlier batches: counted, not stored again.
    already_stored: int = 0
    # The ingest batch these rows became, and (for --replace) how many stored events it discarded.
    batch: int | None = None
    replaced_events: int | None = None
    # What an adapter read differently from the file's face value, with counts, e.g.
    # {"cancelled invoices (C...) read as refund": 12}; informational: no row in it was dropped.
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(r.count for r in self.rejected_reasons)

    @classmethod
    def combine(cls, reports: Sequence[IngestReport], source: str, *, name_files: bool = False) -> IngestReport:
        """One report for rows read in parts (a file's chunks, a folder's files): counts added, reasons merged.

        Args:
            name_files: Say which file each reason came from (parts that are different files).
        """
        if len(reports) == 1:
            return reports[0]
        out = cls(source=source)
        reasons: dict[tuple[str, str | None], RejectedReason] = {}
        rejected = []
        for r in reports:
            out.rows_read += r.rows_read
            out.rows_kept += r.rows_kept
            out.duplicates += r.duplicates
            out.naive_timestamps_as = out.naive_timestamps_as or r.naive_timestamps_as
            for note, count in r.notes.items():
                out.notes[note] = out.notes.get(note, 0) + count
            for x in r.rejected_reasons:
                reason = f"{x.reason} ({Path(r.source).name})" if name_files else x.reason
                into = reasons.setdefault((reason, x.column), RejectedReason(reason, x.column, 0, []))
                into.count += x.count
                into.first_rows = (into.first_rows + x.first_rows)[:5]
            if r.rejected is not None and len(r.rejected):
                part = r.rejected.astype("string")
                rejected.append(part.assign(file=Path(r.source).name) if name_files else part)
        out.rejected_reasons = sorted(reasons.values(), key=lambda x: (x.reason, x.column or ""))
        out.rejected = pd.concat(rejected, ignore_index=True) if rejected else None
        return out

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "duplicates": self.duplicates,
            "already_stored": self.already_stored,
            "rows_rejected": self.rows_rejected,
            "batch": self.batch,
            "replaced_events": self.replaced_events,
            "rejected_reasons": [
                {"reason": r.reason, "column": r.column, "count": r.count, "first_rows": r.first_rows}
                for r in self.rejected_reasons
            ],
            "naive_timestamps_as": self.naive_timestamps_as,
            "notes": dict(self.notes),
        }


# --- bounds on what one ingest may take ---------------------------------------------------

# Measured: validating and sessionizing costs about 100 bytes of memory per cell and about 4
# bytes per byte of text (a 200k-row Parquet file with 1 KB of text per row peaked at 1.0 GB,
# the same rows without the text at 0.25 GB). The estimate errs on the high side.
BYTES_PER_CELL = 100
BYTES_PER_TEXT_BYTE = 4
# Rows read and validated at once from a canonical file: bounds the raw text and validation's
# temporaries (about BYTES_PER_CELL per cell) to a chunk, whatever the file's size.
CHUNK_ROWS = 250_000


@dataclass(frozen=True)
class IngestLimits:
    """How much one ingest may take: rows, memory, and characters per free-text field.

    The defaults fit the public data sets the adapters read on a laptop (Complete Journey,
    1.47M rows, is estimated at about 1.7 GB) and refuse a file that would exhaust memory
    (a 6 MB Parquet file expanding to 2M rows of 1 KB each needed 6.3 GB) before reading
    it. Each limit can be raised with the environment variable named in the error.

    Args:
        max_rows: Rows one file (or folder) may hold.
        max_memory_mb: Estimated peak memory of the ingest, in MB (see ``estimate_ingest``).
        max_text_chars: Characters kept per free-text field (text, device, ...); longer
            values are cut, ending in "…", and counted in the report.
    """

    max_rows: int = 20_000_000
    max_memory_mb: int = 4096
    max_text_chars: int = 2000

    ENV: ClassVar[dict[str, str]] = {
        "max_rows": "SHOPSIGHT_INGEST_MAX_ROWS",
        "max_memory_mb": "SHOPSIGHT_INGEST_MAX_MEMORY_MB",
        "max_text_chars": "SHOPSIGHT_INGEST_MAX_TEXT_CHARS",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: int) -> IngestLimits:
        """The limits from ``SHOPSIGHT_INGEST_*`` entries of ``environ``; keyword overrides (CLI flags) win.

        The caller passes the mapping (agent/settings.py is the one place that reads the process
        environment); this only parses and validates it.

        Raises:
            ValueError: naming the variable whose value is not a positive whole number.
        """
        values: dict[str, int] = {}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw is None or raw.strip() == "":
                continue
            try:
                value = int(raw.replace("_", "").replace(",", ""))
            except ValueError:
                value = 0
            if value <= 0:
                raise ValueError(f"{var}={raw!r} is not a positive whole number")
            values[name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class IngestEstimate:
    """What a file will cost to ingest, measured without loading it."""

    rows: int
    columns: int
    text_bytes: int  # bytes of all string cells once decoded (for CSV: the decompressed file)

    @property
    def memory_mb(self) -> float:
        return (self.rows * self.columns * BYTES_PER_CELL + self.text_bytes * BYTES_PER_TEXT_BYTE) / 1e6


class IngestLimitError(EventDataError):
    """A file over an ingest limit; the message names the limit and how to raise it."""


def estimate_ingest(path: str | Path, limits: IngestLimits | None = None) -> IngestEstimate:
    """Rows, columns and decoded text bytes of a CSV/TSV/Parquet file, or of every such file
    in a folder, read in bounded memory (Parquet's dictionary pages are not expanded, CSV is
    streamed, compressed CSV is decompressed as a stream).

    With ``limits``, it stops reading as soon as the estimate is over the memory budget, so
    a decompression bomb is never read to its end.
    """
    path = Path(path)
    if path.is_dir():
        files = table_files(sorted(path.iterdir()))
        total = IngestEstimate(0, 0, 0)
        for file in files:
            one = estimate_ingest(file, limits)
            total = IngestEstimate(total.rows + one.rows, max(total.columns, one.columns), total.text_bytes + one.text_bytes)
        return total
    if not path.exists():
        raise EventDataError("file not found", source=str(path))
    budget = None if limits is None else limits.max_memory_mb * 1e6
    if path.suffix.lower() in (".parquet", ".pq"):
        return _estimate_parquet(path, budget)
    return _estimate_csv(path, budget)


def check_ingest_limits(
    path: str | Path | Sequence[str | Path], limits: IngestLimits, *, chunk_rows: int | None = None,
) -> IngestEstimate:
    """Refuse ``path`` (one file or folder, or the files a format reads together) before it
    is read if it is over ``limits``' rows or memory budget.

    Args:
        chunk_rows: The input is read and validated this many rows at a time, one file after
            another (the canonical format): the memory it needs is then that of its largest chunk
            (a file's text spread evenly over its chunks), not of the whole input. None: read whole.

    Raises:
        IngestLimitError: naming the file, what it would take, the limit, and the
            environment variable that raises it.
    """
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    estimate = IngestEstimate(0, 0, 0)
    largest_chunk = IngestEstimate(0, 0, 0)
    for one in paths:
        files = table_files(sorted(one.iterdir())) if one.is_dir() and chunk_rows else [one]
        for file in files:
            # Read in chunks, a file's size is no reason to stop counting early: its chunks are what must fit.
            part = estimate_ingest(file, None if chunk_rows else limits)
            estimate = IngestEstimate(estimate.rows + part.rows, max(estimate.columns, part.columns), estimate.text_bytes + part.text_bytes)
            if chunk_rows and part.rows > chunk_rows:
                share = chunk_rows / part.rows
                part = IngestEstimate(chunk_rows, part.columns, int(part.text_bytes * share))
            if part.memory_mb > largest_chunk.memory_mb:
                largest_chunk = part
    source = ", ".join(map(str, paths))
    if estimate.rows > limits.max_rows:
        raise IngestLimitError(
            f"{estimate.rows:,} rows, over the ingest row limit of {limits.max_rows:,}",
            source=source,
            hint=f"raise it with {IngestLimits.ENV['max_rows']}={_round_up(estimate.rows)}, or split the file",
        )
    needs = largest_chunk if chunk_rows else estimate
    if needs.memory_mb > limits.max_memory_mb:
        chunked = f" (read {chunk_rows:,} rows at a time: one chunk of {needs.rows:,} rows" if chunk_rows and needs.rows == chunk_rows else ""
        raise IngestLimitError(
            f"{estimate.rows:,} rows x {estimate.columns} columns with {estimate.text_bytes / 1e6:,.0f} MB of text "
            f"would take about {needs.memory_mb:,.0f} MB of memory to ingest{chunked + ')' if chunked else ''}, "
            f"over the ingest memory budget of {limits.max_memory_mb:,} MB",
            source=source,
            hint=(
                f"raise it with {IngestLimits.ENV['max_memory_mb']}={_round_up(int(needs.memory_mb) + 1)} "
                "if this machine has the memory, or split the file"
            ),
        )
    return estimate


def _round_up(n: int) -> int:
    """A round number at or above ``n``, for a limit a person would type."""
    step = 10 ** max(len(str(n)) - 2, 0)
    return -(-n // step) * step


def table_files(paths: Iterable[Path]) -> list[Path]:
    """The CSV, TSV and Parquet files (compressed CSV included) among ``paths``, in their order."""
    return [p for p in paths if p.is_file() and _table_suffix(p)]


def _table_suffix(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".csv", ".tsv", ".txt", ".parquet", ".pq", ".csv.gz", ".tsv.gz", ".csv.bz2", ".csv.xz"))


def _estimate_parquet(path: Path, budget: float | None) -> IngestEstimate:
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise EventDataError(f"not a readable Parquet file: {exc}", source=str(path)) from exc
    rows, columns = pf.metadata.num_rows, len(schema.names)
    text_cols = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_binary(f.type) or pa.types.is_dictionary(f.type)]
    if not text_cols:
        return IngestEstimate(rows, columns, 0)
    # Dictionary-encoded text (pyarrow's default) is kept as a dictionary: a batch costs its
    # indices, however long the repeated strings are.
    reader = pq.ParquetFile(path, read_dictionary=text_cols)
    text_bytes = 0
    cells = rows * columns * BYTES_PER_CELL
    for batch in reader.iter_batches(batch_size=65_536, columns=text_cols):
        for column in batch.columns:
            if pa.types.is_dictionary(column.type):
                lengths = pc.binary_length(column.dictionary)
                used = pc.take(lengths, column.indices)
                text_bytes += int(pc.sum(used).as_py() or 0)
            else:
                text_bytes += int(pc.sum(pc.binary_length(column)).as_py() or 0)
        if budget is not None and cells + text_bytes * BYTES_PER_TEXT_BYTE > budget:
            break  # over the budget already: the rest would only make it larger
    return IngestEstimate(rows, columns, text_bytes)


def _open_decompressed(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _estimate_csv(path: Path, budget: float | None) -> IngestEstimate:
    """Lines (less the header), columns of the first line, and bytes: streamed, 4 MB at a time."""
    lines = text_bytes = 0
    head = last = b""
    columns = 0
    try:
        with _open_decompressed(path) as fh:
            while chunk := fh.read(1 << 22):
                if len(head) < 1 << 16:
                    head += chunk[: 1 << 16]
                lines += chunk.count(b"\n")
                text_bytes += len(chunk)
                last = chunk[-1:]
                if not columns and b"\n" in head:
                    first = head.split(b"\n", 1)[0]
                    columns = first.count(b"\t" if b"\t" in first else b",") + 1
                if budget is not None and max(lines - 1, 0) * max(columns, 1) * BYTES_PER_CELL + text_bytes * BYTES_PER_TEXT_BYTE > budget:
                    break  # over the budget already: never read a decompression bomb to its end
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise EventDataError(f"cannot read the file: {exc}", source=str(path)) from exc
    if not columns:
        first = head.split(b"\n", 1)[0]
        columns = first.count(b"\t" if b"\t" in first else b",") + 1 if first else 1
    if last and last != b"\n":
        lines += 1  # a last line without a newline
    return IngestEstimate(max(lines - 1, 0), columns, text_bytes)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ``["user_id=CustomerID", ...]`` into ``{"CustomerID": "user_id"}`` (source → canonical)."""
    mapping: dict[str, str] = {}
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--map '{pair}': expected CANONICAL=SOURCE, e.g. user_id=CustomerID")
        canonical, source = (p.strip() for p in pair.split("=", 1))
        if canonical not in known:
            raise ValueError(
                f"--map '{pair}': '{canonical}' is not a canonical column; choose from {', '.join(sorted(known))}"
            )
        if not source:
            raise ValueError(f"--map '{pair}': the source column name is empty")
        mapping[source] = canonical
    return mapping


def read_table(
    path: str | Path,
    *,
    encoding: str = "utf-8",
    sep: str | None = None,
    header: bool = True,
    names: list[str] | None = None,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet file as strings (CSV) or native types (Parquet).

    CSV cells are read as text so that validation, not the reader, decides what a bad
    value is, and can say which row held it.
    """
    path = _readable_table(path, encoding)
    source = str(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise EventDataError(f"not a readable Parquet file: {exc}", source=source) from exc
    else:
        try:
            df = pd.read_csv(path, **_csv_options(path, encoding, sep, header, names))
        except pd.errors.EmptyDataError as exc:
            raise EventDataError("the file is empty", source=source) from exc
        except pd.errors.ParserError as exc:
            raise EventDataError(f"malformed CSV: {exc}", source=source) from exc
    if len(df) == 0:
        raise EventDataError("the file has a header but no rows", source=source)
    return df


def iter_table(path: str | Path, *, encoding: str = "utf-8", chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """:func:`read_table` in chunks of at most ``chunk_rows`` rows (CSV streamed, Parquet by record batches).

    Raises:
        EventDataError: as :func:`read_table` does (checked before the first chunk, or at the chunk that is malformed).
    """
    path = _readable_table(path, encoding)
    source = str(path)
    rows = 0
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows):
                if batch.num_rows:
                    rows += batch.num_rows
                    yield batch.to_pandas()
        else:
            with pd.read_csv(path, chunksize=chunk_rows, **_csv_options(path, encoding, None, True, None)) as reader:
                for chunk in reader:
                    if len(chunk):  # a file of only a header reads as one empty chunk
                        rows += len(chunk)
                        yield chunk
    except pd.errors.EmptyDataError as exc:
        raise EventDataError("the file is empty", source=source) from exc
    except pd.errors.ParserError as exc:
        raise EventDataError(f"malformed CSV: {exc}", source=source) from exc
    except (OSError, EOFError, lzma.LZMAError, pa.ArrowInvalid) as exc:
        what = "not a readable Parquet file" if path.suffix.lower() in (".parquet", ".pq") else "cannot read the file"
        raise EventDataError(f"{what}: {exc}", source=source) from exc
    if rows == 0:
        raise EventDataError("the file has a header but no rows", source=source)


def _readable_table(path: str | Path, encoding: str) -> Path:
    """``path`` if it is a non-empty file in a known ``encoding``; else the EventDataError that says why not."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise EventDataError("file not found", source=source)
    if path.is_dir():
        raise EventDataError(
            "is a folder, not a file", source=source,
            hint="give one CSV, TSV or Parquet file; `shopsight datasets` shows which formats read a folder",
        )
    if path.stat().st_size == 0:
        raise EventDataError("the file is empty", source=source)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise EventDataError(
            f"unknown text encoding '{encoding}'", source=source,
            hint="pass --encoding with a Python codec name such as utf-8, latin-1 or cp1252",
        ) from None
    if path.suffix.lower() not in (".parquet", ".pq"):
        _check_encoding(path, encoding)
    return path


def _csv_options(path: Path, encoding: str, sep: str | None, header: bool, names: list[str] | None) -> dict:
    suffix = "".join(path.suffixes[-2:]).lower()
    if sep is None:
        sep = "\t" if suffix.endswith((".tsv", ".tsv.gz")) else ","
    return {"sep": sep, "dtype": str, "keep_default_na": False, "na_values": [""], "encoding": encoding,
            "header": 0 if header else None, "names": names}


def _check_encoding(path: Path, encoding: str) -> None:
    """Fail with the line number of the first byte sequence that is not valid ``encoding``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    line = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk[: exc.start].count(b"\n")
                raise EventDataError(
                    f"line {line} is not valid {encoding} (byte {chunk[exc.start]:#04x})",
                    source=str(path),
                    hint="pass --encoding latin-1 (or the file's real encoding)",
                ) from exc
            line += chunk.count(b"\n")


def validate_events(
    raw: pd.DataFrame,
    *,
    source: str,
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str = "UTC",
    extra_events: Iterable[str] = (),
    row_offset: int = 2,
    allow_empty: bool = False,
) -> tuple[pd.DataFrame, IngestReport]:
    """Validate a raw table into canonical events.

    Args:
        raw: the table as read (CSV cells as strings).
        source: file name used in error messages.
        mapping: source column → canonical column renames.
        strict: raise on the first unusable or duplicate row instead of reporting it.
        tz: time zone of timestamps that carry none.
        extra_events: event names accepted beyond EVENT_TYPES.
        row_offset: the file row number of ``raw``'s first row (2 for a CSV with a header:
            row 1 is the header), so errors point at the line a person would open.
        allow_empty: return no events rather than raise when no row is usable (one chunk of a file).

    Returns:
        The canonical events (sorted by user, time) and the report of what was not kept.
    """
    report = IngestReport(source=source, rows_read=len(raw))
    if len(raw) == 0:
        raise EventDataError("no rows to ingest", source=source)
    df = raw.rename(columns=dict(mapping or {}))
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in MUST_PROVIDE if c not in df.columns]
    if missing:
        # Every missing column at once, and any --map source the file does not have (a typo there
        # is the usual cause), so one run shows the whole fix.
        names = ", ".join(f"'{c}'" for c in missing)
        message = f"missing required column{'s' if len(missing) > 1 else ''} {names} (found: {', '.join(map(str, raw.columns))})"
        absent = [src for src in (mapping or {}) if src not in raw.columns]
        if absent:
            message += f"; --map names {', '.join(repr(a) for a in absent)}, which the file does not have"
        raise EventDataError(
            message,
            source=source,
            column=missing[0],
            hint="map a column to " + ("it" if len(missing) == 1 else "each") + ", e.g. "
            + " ".join(f"--map {c}=YourColumn" for c in missing),
        )
    dup_cols = [c for c in df.columns if list(df.columns).count(c) > 1]
    if dup_cols:
        raise EventDataError(f"column '{dup_cols[0]}' appears twice after mapping", source=source, column=dup_cols[0])

    keep = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in df.columns]
    df = df[keep].copy()
    df.index = pd.RangeIndex(row_offset, row_offset + len(df))  # file row numbers
    bad = pd.Series("", index=df.index, dtype=object)  # reason per row ("" = fine)
    bad_col = pd.Series("", index=df.index, dtype=object)

    # Mirrors `bad != ""` (comparing a million strings for every check costs seconds); the checks
    # combine as plain arrays, which a chunk of a hundred lines (a `shopsight watch` poll) notices.
    flagged = np.zeros(len(df), dtype=bool)

    # Strict mode raises for the earliest bad row of the file, whichever check found it.
    first_bad: list[tuple[int, str, str, object]] = []

    def flag(mask: pd.Series, reason: str, column: str) -> None:
        new = mask.to_numpy(dtype=bool, na_value=False) & ~flagged
        if not new.any():
            return
        if strict:
            row = int(df.index[int(new.argmax())])
            first_bad.append((row, reason, column, df.at[row, column]))
        bad[new] = reason
        bad_col[new] = column
        flagged[new] = True

    # --- NUL bytes: no field may hold one (they end strings in C readers and hide text) ----
    for col in df.columns:
        if (df[col].dtype == object or isinstance(df[col].dtype, pd.StringDtype)) and _may_hold_nul(df[col]):
            flag(df[col].astype("string").str.contains("\x00", regex=False).fillna(False).astype(bool),
                 "NUL byte inside the field", col)

    # --- user_id ---------------------------------------------------------------------
    df["user_id"] = _as_text(df["user_id"], source, "user_id")
    flag(df["user_id"].isna(), "missing user id", "user_id")

    # --- event -----------------------------------------------------------------------
    allowed = set(EVENT_TYPES) | set(extra_events)
    ev = _as_text(df["event"], source, "event").str.strip().str.lower()
    df["event"] = ev
    flag(~ev.isin(allowed), "unknown event (allowed: " + ", ".join(sorted(allowed)) + ")", "event")

    # --- ts --------------------------------------------------------------------------
    ts, naive = _parse_timestamps(df["ts"], tz)
    if naive:
        report.naive_timestamps_as = tz
    flag(ts.isna(), "unparsable timestamp", "ts")
    df["ts"] = ts

    # --- price / quantity -------------------------------------------------------------
    if "price" in df.columns:
        price = _as_number(df["price"])
        flag(df["price"].notna() & price.isna(), "price is not a number", "price")
        flag(price < 0, "negative price", "price")
        df["price"] = price
    else:
        df["price"] = np.nan
    if "quantity" in df.columns:
        qty = _as_number(df["quantity"])
        flag(df["quantity"].notna() & qty.isna(), "quantity is not a number", "quantity")
        flag(qty.notna() & (qty != np.floor(qty.fillna(0))), "quantity is not a whole number", "quantity")
        df["quantity"] = qty
    else:
        df["quantity"] = np.nan
    df["quantity"] = df["quantity"].fillna(1.0)
    flag(df["quantity"] < 0, "negative quantity", "quantity")
    flag((df["event"] == "purchase") & (df["quantity"] == 0), "purchase with quantity 0", "quantity")

    for col in ("item_id", "category", "session_id", *OPTIONAL_COLUMNS):
        if col in df.columns:
            df[col] = _as_text(df[col], source, col)
        elif col in REQUIRED_COLUMNS:
            df[col] = pd.Series(pd.NA, index=df.index, dtype="string")

    if first_bad:
        row, reason, column, value = min(first_bad, key=lambda t: t[0])
        raise EventDataError(
            f"{reason}: {value!r}", source=source, row=row, column=column,
            hint="without --strict such rows are set aside and reported",
        )

    # --- rejected rows -------------------------------------------------------------------
    is_bad = bad != ""
    if is_bad.any():
        rejected = raw.iloc[np.flatnonzero(is_bad.to_numpy())].copy()
        rejected.insert(0, "reason", bad[is_bad].to_numpy())
        rejected.insert(0, "row", df.index[is_bad])
        report.rejected = rejected.reset_index(drop=True)
        for (reason, column), rows in df.index[is_bad].to_series().groupby(
            [bad[is_bad].to_numpy(), bad_col[is_bad].to_numpy()], sort=True
        ):
            report.rejected_reasons.append(
                RejectedReason(reason=reason, column=column, count=len(rows), first_rows=[int(r) for r in rows[:5]])
            )
    good = df[~is_bad]

    # --- duplicates ------------------------------------------------------------------
    dup = repeated_rows(good)
    if dup.any():
        if strict:
            row = int(dup.idxmax())
            raise EventDataError(
                "duplicate of an earlier row", source=source, row=row, column=None,
                hint="without --strict duplicates are counted and dropped",
            )
        report.duplicates = int(dup.sum())
        good = good[~dup]

    events = to_canonical(good)
    report.rows_kept = len(events)
    if report.rows_kept == 0 and not allow_empty:
        raise _no_usable_rows(report, source)
    return events, report


def repeated_rows(df: pd.DataFrame) -> pd.Series:
    """True for each row equal in every column to an earlier one.

    Only rows that agree on user, time and event can be duplicates: find those cheaply,
    then compare every column among them alone (a third of ingest time otherwise).
    """
    same_key = df.duplicated(subset=["user_id", "ts", "event"], keep=False)
    dup = pd.Series(False, index=df.index)
    if same_key.any():
        dup[same_key] = df[same_key].duplicated(keep="first")
    return dup


def _no_usable_rows(report: IngestReport, source: str) -> EventDataError:
    first = report.rejected_reasons[0] if report.rejected_reasons else None
    detail = f"; e.g. row {first.first_rows[0]}, column '{first.column}': {first.reason}" if first else ""
    return EventDataError(f"no usable rows ({report.rows_rejected} rejected{detail})", source=source)


def set_canonical_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (changed in place and returned) with the canonical text, ``ts`` and ``price`` dtypes, each cast only where
    the column has another: a `shopsight watch` poll's validated rows already have them. ``quantity`` is the caller's."""
    for col in STRING_COLUMNS:
        if col in frame.columns and frame[col].dtype != pd.StringDtype():  # the default storage, as astype("string") makes
            frame[col] = frame[col].astype("string")
    if frame["ts"].dtype != "datetime64[ns, UTC]":
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ns, UTC]")
    if frame["price"].dtype != "float64":
        frame["price"] = frame["price"].astype("float64")
    return frame


def to_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Order columns and set the canonical dtypes; sort by user then time (stable)."""
    cols = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df.columns]
    out = set_canonical_dtypes(df[cols].copy())
    out["quantity"] = out["quantity"].astype("float64").round().astype("int64")
    out = out.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    return out


SMALL_TEXT_ROWS = 2_000  # up to this many cells a text column is cleaned in Python (see _as_text)


def _as_text(col: pd.Series, source: str, name: str) -> pd.Series:
    """Text ids: numbers that arrive as floats (``12.0``) become ``"12"``; blanks become NA."""
    if pd.api.types.is_float_dtype(col):
        whole = col.dropna()
        if (whole == np.floor(whole)).all():
            col = col.astype("Int64")
    elif len(col) <= SMALL_TEXT_ROWS and (col.dtype == object or col.dtype == "str"):
        # a hundred cells (a `shopsight watch` poll): in Python, where each vectorised step costs a tenth of a millisecond
        values = col.to_numpy(dtype=object)
        if all(isinstance(v, str) or v is None or (isinstance(v, float) and v != v) for v in values):
            cells = [v.strip() if isinstance(v, str) else None for v in values]
            return pd.Series(pd.array([v if v else None for v in cells], dtype="string"), index=col.index, name=col.name)
    out = col.astype("string").str.strip()
    blank = (out == "").to_numpy(dtype=bool, na_value=False)
    return out.mask(blank, pd.NA) if blank.any() else out


# Below this many cells a column's NUL check joins its text in one string (tens of microseconds for
# the hundred lines of a `shopsight watch` poll, where each vectorised check costs a tenth of a
# millisecond); above it the join costs more than the check itself.
NUL_JOIN_MAX_ROWS = 50_000


def _may_hold_nul(col: pd.Series) -> bool:
    """False when no cell of ``col`` can hold a NUL byte (a cheap look first); True means: check every cell."""
    if len(col) > NUL_JOIN_MAX_ROWS:
        return True
    values = col.to_numpy(dtype=object)
    try:
        return "\x00" in "".join(values[pd.notna(values)])
    except TypeError:  # cells that are not text: the check decides
        return True


def _as_number(col: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):
        return col.astype("float64")
    text = col.astype("string").str.strip().str.replace(",", "", regex=False)
    return pd.to_numeric(text, errors="coerce").astype("float64")


def _parse_timestamps(col: pd.Series, tz: str) -> tuple[pd.Series, bool]:
    """Parse to UTC. Naive stamps are read in ``tz``; epoch seconds/millis are accepted.

    Returns the parsed series (NaT where unparsable) and whether any stamp was naive.
    """
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC"), False
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC"), True
    if pd.api.types.is_numeric_dtype(col):
        return _from_epoch(col.astype("float64")), False
    text = col.astype("string").str.strip()
    # Most files hold date strings: a sample that is not all numbers settles it without
    # converting every value (to_numeric reads each value on its own, so the sample
    # decides exactly as the whole column would).
    if pd.to_numeric(text.iloc[:1000], errors="coerce").notna().all():
        numeric = pd.to_numeric(text, errors="coerce")
        if numeric.notna().all():
            return _from_epoch(numeric.astype("float64")), False
    out = pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns, UTC]")
    # Stamps with an explicit offset/zone and naive stamps are parsed separately so that
    # a mix of the two is handled row by row.
    has_zone = text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2}|UTC| [A-Z]{3})$", regex=True, na=False)
    naive_any = False
    if has_zone.all():  # every stamp has its zone (the usual file): no row-by-row assignment
        z = _to_datetime_mixed(text.str.replace(r" UTC$", "+00:00", regex=True), utc=True)
        return z.astype("datetime64[ns, UTC]"), False
    if has_zone.any():
        z = _to_datetime_mixed(text[has_zone].str.replace(r" UTC$", "+00:00", regex=True), utc=True)
        out[has_zone] = z
    rest = ~has_zone & text.notna()
    if rest.any():
        parsed = _to_datetime_mixed(text[rest])
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            out[rest] = parsed.dt.tz_convert("UTC")
        else:
            naive_any = bool(parsed.notna().any())
            out[rest] = parsed.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return out, naive_any


def _to_datetime_mixed(text: pd.Series, utc: bool = False) -> pd.Series:
    """``pd.to_datetime(text, format="mixed", errors="coerce")``, trying strict ISO 8601 first.

    Parsing "mixed" guesses each value's format on its own, about ten times slower than
    ISO 8601; most files are ISO throughout, and when any value is not, the whole column
    is parsed the mixed way as before.
    """
    try:
        return pd.to_datetime(text, format="ISO8601", errors="raise", utc=utc)
    except (ValueError, TypeError):
        return pd.to_datetime(text, format="mixed", errors="coerce", utc=utc)


def _from_epoch(values: pd.Series) -> pd.Series:
    # Epoch milliseconds are ~1.7e12 today, seconds ~1.7e9.
    unit = "ms" if values.abs().median() > 1e11 else "s"
    return pd.to_datetime(values, unit=unit, utc=True, errors="coerce")


def iter_events(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
    chunk_rows: int = CHUNK_ROWS,
    on_rows: Callable[[int], None] | None = None,
) -> Iterator[tuple[pd.DataFrame, IngestReport]]:
    """A canonical-format CSV or Parquet file, validated ``chunk_rows`` rows at a time: (events, report) per chunk.

    Each chunk is validated on its own (errors still name the file's row), so the raw text and
    validation's temporaries never hold more than one chunk; ``on_rows(n)`` is called after each.
    Duplicates within a chunk are dropped and counted; a row repeating one of an *earlier chunk*
    is left for the caller to find (:func:`read_events` here, the ingest's batch dedupe there).
    """
    offset = 2  # row 1 is the header
    for raw in iter_table(path, encoding=encoding, chunk_rows=chunk_rows):
        events, report = validate_events(raw, source=str(path), mapping=mapping, strict=strict, tz=tz,
                                         row_offset=offset, allow_empty=True)
        offset += len(raw)
        if on_rows is not None:
            on_rows(len(raw))
        yield events, report


def read_events(
    path: str | Path,
    *,
    mapping: Mapping[str, str] | None = None,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
    chunk_rows: int = CHUNK_ROWS,
    on_rows: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, IngestReport]:
    """Read a canonical-format CSV or Parquet file (after optional column mapping) whole, validated chunk by chunk.

    The file's events in one frame (sorted by user, time), duplicates across chunks dropped and
    counted too. Ingest streams the chunks instead (:func:`iter_events`), never holding the file.
    """
    parts, reports = [], []
    for events, report in iter_events(path, mapping=mapping, strict=strict, tz=tz, encoding=encoding,
                                      chunk_rows=chunk_rows, on_rows=on_rows):
        parts.append(events)
        reports.append(report)
    report = IngestReport.combine(reports, str(path))
    if len(parts) == 1:
        events = parts[0]
    else:  # a row repeating one of an earlier chunk is a duplicate too
        events = pd.concat(parts, ignore_index=True)
        dup = repeated_rows(events)
        if dup.any() and strict:
            raise EventDataError(
                "a row repeats an earlier one", source=str(path),
                hint=f"{int(dup.sum())} such rows; without --strict duplicates are counted and dropped",
            )
        report.duplicates += int(dup.sum())
        events = to_canonical(events[~dup])
        report.rows_kept = len(events)
    if report.rows_kept == 0:
        raise _no_usable_rows(report, str(path))
    return events, report


# --- arrow-backed string columns ---------------------------------------------------------


def arrow_strings(column: pd.Series) -> pa.ChunkedArray | None:
    """The pyarrow array behind a pyarrow-backed string column (no copy), else None."""
    dtype = column.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return column.array.__arrow_array__()
    if isinstance(dtype, pd.ArrowDtype) and (pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)):
        return column.array.__arrow_array__()
    return None


def single_chunk_strings(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each pyarrow-backed string column in one contiguous chunk (same values, same dtype).

    Parquet reads arrive in batches (four chunks for the 440k-row demo), and pyarrow's take
    on a many-chunk array costs time in the whole column's length: each subset of rows (one
    user's events) then paid ~1.5 ms per string column on 1.8M rows. One chunk makes it cost
    in the rows taken. Combining costs ~1.5 ms per column per 440k rows, once per load.
    """
    for col in df.columns:
        chunks = arrow_strings(df[col])
        if chunks is not None and chunks.num_chunks > 1:
            try:
                df[col] = pd.Series(chunks.combine_chunks(), dtype=df[col].dtype, index=df.index)
            except (pa.ArrowInvalid, pa.ArrowCapacityError):  # too big for one chunk: leave it as read
                continue
    return df
