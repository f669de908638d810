"""CDNOW (Fader & Hardie): CD purchases of 23,570 customers, 1997–1998, as shipped by PyPI `lifetimes`.

The files are read from the installed package's folder without importing ``lifetimes``
(it breaks on current pandas).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from shopsight.behavior.adapters._common import parse_times, validate_parsed
from shopsight.behavior.events import EventDataError, IngestReport, read_table

MASTER_COLUMNS = ["customer_id", "date", "quantity", "value"]
# The sample file adds the customer's number within the sample after the master id.
SAMPLE_COLUMNS = ["customer_id", "sample_id", "date", "quantity", "value"]


def cdnow_path(sample: bool = False) -> Path | None:
    """``CDNOW_master.txt`` (or ``CDNOW_sample.txt``) in the installed ``lifetimes``, or None."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / ("CDNOW_sample.txt" if sample else "CDNOW_master.txt")
    return path if path.exists() else None


def _read_raw(path: str | Path, encoding: str = "utf-8") -> tuple[pd.DataFrame, int]:
    """The file as text cells with named columns, and the file row of its first data row.

    Whitespace-separated with CRLF line ends; the ``lifetimes`` copy of the master file
    has a header line, the original and the sample have none; the sample has 5 columns.
    """
    source = str(path)
    path = Path(path)
    if not path.exists():
        raise EventDataError("file not found", source=source, hint="install the PyPI package `lifetimes` for the packaged copy")
    with open(path, encoding=encoding, errors="replace") as fh:
        first = fh.readline().split()
    if not first:
        raise EventDataError("the file is empty or starts with a blank line", source=source, row=1)
    header = not first[0].isdigit()
    width = len(first)
    if width not in (4, 5):
        raise EventDataError(
            f"expected 4 (master) or 5 (sample) whitespace-separated columns, found {width}",
            source=source, row=1, hint="columns: customer id, [sample id,] date YYYYMMDD, number of CDs, dollar value",
        )
    names = MASTER_COLUMNS if width == 4 else SAMPLE_COLUMNS
    raw = read_table(path, encoding=encoding, sep=r"\s+", header=header, names=names)
    return raw, 2 if header else 1


def read_cdnow(
    path: str | Path,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read ``CDNOW_master.txt`` or ``CDNOW_sample.txt`` into canonical purchase events.

    Each line (customer id, date YYYYMMDD, number of CDs, dollar value) becomes one
    ``purchase``: user_id = customer id without leading zeros ("00001" → "1"; the master
    id also in the sample, so both files name a customer alike), ts = the date at 00:00
    in ``tz``, quantity = number of CDs, price = dollar value / number of CDs, so that
    price × quantity = the dollar value (a line with 0 CDs keeps the value as its price).
    session_id = "<customer>-<YYYYMMDD>": one session per customer and purchase day;
    order_id = "<customer>-<YYYYMMDD>-<k>", the k-th line of that day, because the file
    holds identical lines on the same day that are separate purchases, not duplicates.
    No item or category.

    Args:
        path: the master or sample file.
        strict: raise on the first unusable row instead of reporting it.
        tz: zone of the purchase dates.
        encoding: text encoding of the file.

    Returns:
        Canonical events and the ingest report.

    Raises:
        EventDataError: for a file that is not CDNOW-shaped, or (strict) the first bad
            row, naming the file, row and column.
    """
    source = str(path)
    raw, offset = _read_raw(path, encoding)
    user = raw["customer_id"].astype("string").str.strip().str.lstrip("0").replace("", "0")
    date = raw["date"].astype("string").str.strip()
    qty = pd.to_numeric(raw["quantity"], errors="coerce")
    value = pd.to_numeric(raw["value"], errors="coerce")
    price = (value / qty.where(qty != 0)).fillna(value)
    day_key = user + "-" + date
    line_of_day = day_key.groupby(day_key, sort=False).cumcount() + 1
    table = pd.DataFrame(
        {
            "user_id": user,
            "ts": parse_times(date, tz=tz, formats=("%Y%m%d",)),
            "event": "purchase",
            # Unreadable numbers go on as written so that validation reports them by row.
            "price": price.astype("string").where(value.notna(), raw["value"]),
            "quantity": raw["quantity"],
            "session_id": day_key,
            "order_id": day_key + "-" + line_of_day.astype("string"),
        }
    )
    events, report = validate_parsed(
        table, source=source, strict=strict, tz=tz, row_offset=offset,
        time_column="date", time_values=raw["date"], time_expected="YYYYMMDD",
    )
    report.naive_timestamps_as = tz
    return events, report


def cdnow_transactions(sample: bool = False) -> pd.DataFrame:
    """The packaged CDNOW lines as a typed table, for benchmarks (BG/NBD and friends).

    Args:
        sample: the 2,357-customer sample instead of the full 23,570-customer master file.

    Returns:
        One row per file line: ``customer_id`` (int64, the master id), ``date``
        (datetime64, the purchase day), ``quantity`` (int64 CDs), ``value`` (float64 dollars).

    Raises:
        FileNotFoundError: when the PyPI package ``lifetimes`` is not installed.
    """
    path = cdnow_path(sample)
    if path is None:
        raise FileNotFoundError("CDNOW ships with the PyPI package `lifetimes`: pip install lifetimes")
    raw, _ = _read_raw(path)
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"].astype("int64"),
            "date": pd.to_datetime(raw["date"], format="%Y%m%d").astype("datetime64[ns]"),
            "quantity": raw["quantity"].astype("int64"),
            "value": raw["value"].astype("float64"),
        }
    )
