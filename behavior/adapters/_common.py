"""What the format readers share: checking a file's columns and reading its times exactly.

Readers parse times themselves, with the format the data set documents, because a generic
guess goes wrong on public data: CDNOW's ``19970101`` looks like epoch seconds, and one
bad cell in an epoch column would make every row of it unreadable. Everything else is
left to :func:`behavior.events.validate_events`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shopsight.behavior.events import EventDataError, IngestReport, validate_events


def require_columns(raw: pd.DataFrame, columns: Sequence[str], *, source: str, fmt: str) -> None:
    """Raise if ``raw`` lacks a column the format ``fmt`` must have.

    Raises:
        EventDataError: naming the first missing column and the columns that were found.
    """
    found = [str(c).strip() for c in raw.columns]
    for col in columns:
        if col not in found:
            raise EventDataError(
                f"missing column '{col}' of the {fmt} format (found: {', '.join(found)})",
                source=source,
                column=col,
                hint=f"is this really a {fmt} file? `shopsight datasets` lists the formats",
            )


def first_row_number(path: str | Path) -> int:
    """File row number of a table's first data row: 2 in a CSV (row 1 is the header), 1 in Parquet."""
    return 1 if Path(path).suffix.lower() in (".parquet", ".pq") else 2


def parse_times(
    values: pd.Series,
    *,
    tz: str,
    formats: Sequence[str] = (),
    unit: str | None = None,
) -> pd.Series:
    """Parse a column of times to UTC, each value by the first of ``formats`` that fits.

    Args:
        values: the column as read (text, numbers or datetimes).
        tz: zone of times that carry none. Local times that occur twice when clocks go
            back are read as standard time; times skipped when clocks go forward move
            forward to the first valid time, so no row is lost to a clock change.
        formats: ``strptime`` formats to try in order.
        unit: ``"s"`` or ``"ms"`` for epoch numbers instead of formats.

    Returns:
        ``datetime64[ns, UTC]`` values on ``values``' index, NaT where nothing fitted
        (validation counts those as "unparsable timestamp").
    """
    if unit is not None:
        numbers = pd.to_numeric(values, errors="coerce")
        out = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    else:
        text = values.astype("string").str.strip()
        naive = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
        for fmt in formats:
            todo = naive.isna() & text.notna()
            if not todo.any():
                break
            naive[todo] = pd.to_datetime(text[todo], format=fmt, errors="coerce")
        out = naive.dt.tz_localize(
            tz, ambiguous=np.zeros(len(naive), dtype=bool), nonexistent="shift_forward"
        ).dt.tz_convert("UTC")
    return out.astype("datetime64[ns, UTC]")


def validate_parsed(
    table: pd.DataFrame,
    *,
    source: str,
    strict: bool,
    tz: str,
    row_offset: int,
    time_column: str,
    time_values: pd.Series,
    time_expected: str,
    extra_events: Sequence[str] = (),
) -> tuple[pd.DataFrame, IngestReport]:
    """:func:`validate_events` for a table whose ``ts`` a reader parsed with :func:`parse_times`.

    In strict mode validation names the earliest bad row; when that row's fault is its
    time, the error is raised again with the time as the file wrote it and the file's
    own column name, which the parsed NaT no longer shows.

    Args:
        table: canonical columns (plus any raw columns to keep in rejected rows).
        source: file name for errors.
        strict: raise on the first unusable or duplicate row.
        tz: zone for validation (the times are already UTC).
        row_offset: file row number of ``table``'s first row.
        time_column: the file's time column name.
        time_values: that column as read.
        time_expected: the form a time should have, for the message.
        extra_events: event names accepted beyond the canonical ones.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: as :func:`validate_events`.
    """
    try:
        return validate_events(
            table, source=source, strict=strict, tz=tz, extra_events=extra_events, row_offset=row_offset
        )
    except EventDataError as exc:
        if not strict or exc.column != "ts" or exc.row is None:
            raise
        value = time_values.iloc[exc.row - row_offset]
        raise EventDataError(
            f"cannot read {value!r} as a time (expected {time_expected})",
            source=source,
            row=exc.row,
            column=time_column,
            hint=exc.hint,
        ) from exc


def drop_float_suffix(ids: pd.Series) -> pd.Series:
    """``"13085.0"`` → ``"13085"``: ids that a spreadsheet export wrote as floats."""
    return ids.astype("string").str.strip().str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
