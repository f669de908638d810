"""Events from a PostgreSQL table or read-only query, pulled incrementally by a watermark column.

The rows are read in one READ ONLY, REPEATABLE READ transaction through a server-side cursor,
``CHUNK_ROWS`` at a time, and each chunk goes through the same validation (``validate_events``)
and the same append path (``behavior.ingest.append_batch``) as a file's.

Incremental pulls (``since_column``): each batch's manifest entry keeps the source's watermark,
the largest value of that column it read. The next pull of the same source (same server,
database, table or query, and column) asks for rows ``>=`` that value, not ``>``: rows that share
the watermark's value but arrived after the last pull are not lost, and the rows at the
watermark that were already pulled come back once and are dropped by the batch dedupe as already
stored (identity: user, time, event, item, session, order), never stored twice. Undoing a batch
takes its watermark with it, so the next pull reads those rows again. A row inserted later with
a value *below* the watermark (a late write with an old timestamp) is not pulled: give the
table a column set on insert (``inserted_at``, a serial id) to catch those.

Passwords never leave this module: the source's name in the manifest, reports and errors is the
URL without its password (:func:`mask_url`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import pandas as pd

from shopsight.behavior.events import (
    CHUNK_ROWS,
    MUST_PROVIDE,
    EventDataError,
    IngestReport,
    validate_events,
)

SCHEMES = ("postgresql", "postgres")
# PostgreSQL types by what ingest can make of them.
TEXT_TYPES = {"text", "varchar", "bpchar", "char", "name", "citext", "uuid"}
INTEGER_TYPES = {"int2", "int4", "int8", "oid"}
NUMBER_TYPES = INTEGER_TYPES | {"float4", "float8", "numeric", "money"}
TIME_TYPES = {"timestamptz", "timestamp", "date"}
# What each canonical column may be in the database: ids are text or whole numbers, times are
# timestamps (or epoch numbers), amounts are numbers (or text validation can read as one).
ALLOWED: dict[str, tuple[set[str], str]] = {
    "user_id": (TEXT_TYPES | INTEGER_TYPES, "text or a whole number"),
    "item_id": (TEXT_TYPES | INTEGER_TYPES, "text or a whole number"),
    "session_id": (TEXT_TYPES | INTEGER_TYPES, "text or a whole number"),
    "order_id": (TEXT_TYPES | INTEGER_TYPES, "text or a whole number"),
    "event": (TEXT_TYPES, "text"),
    "category": (TEXT_TYPES | INTEGER_TYPES, "text"),
    "ts": (TIME_TYPES | NUMBER_TYPES, "a timestamp (timestamptz, timestamp, date) or epoch seconds/milliseconds"),
    "price": (NUMBER_TYPES | TEXT_TYPES, "a number"),
    "quantity": (NUMBER_TYPES | TEXT_TYPES, "a number"),
}
WATERMARK_TYPES = TIME_TYPES | NUMBER_TYPES | TEXT_TYPES
WATERMARK_NOTE = "rows re-read at the watermark ({column} = {value}); those already stored are counted as such"


class DatabaseSourceError(EventDataError):
    """The database source cannot be read: bad URL, no server, no such table or column, a wrong type."""


def mask_url(url: str) -> str:
    """``url`` without its password (in the authority or a ``password=`` parameter): safe to print and store."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        netloc = f"{auth.split(':', 1)[0]}@{host}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "password"]
    return parts._replace(netloc=netloc, query=urlencode(query)).geturl()


def check_url(url: str) -> str:
    """``url`` if it is a PostgreSQL URL naming a host and a database; its masked form for messages.

    Raises:
        DatabaseSourceError: naming what is wrong with it (never its password).
    """
    shown = mask_url(url) if "://" in url else re.sub(r"(?i)(password\s*=\s*)\S+", r"\1***", url)
    hint = "give postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, e.g. postgresql://shop@127.0.0.1:5432/shop"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DatabaseSourceError(f"not a valid database URL ({exc})", source=shown, hint=hint) from None
    if parts.scheme.lower() not in SCHEMES:
        raise DatabaseSourceError(
            f"not a PostgreSQL URL (scheme '{parts.scheme or 'none'}'; only postgresql:// URLs are read)",
            source=shown, hint=hint,
        )
    if not parts.hostname:
        raise DatabaseSourceError("the URL names no host", source=shown, hint=hint)
    if not unquote(parts.path.lstrip("/")):
        raise DatabaseSourceError("the URL names no database", source=shown, hint=hint)
    if port == 0:
        raise DatabaseSourceError("port 0 is not a port", source=shown, hint=hint)
    return shown


@dataclass
class DatabaseSource:
    """A table (``schema.table`` or ``table``) or a read-only ``query`` in a PostgreSQL database.

    Args:
        url: The connection URL; its password is used to connect and never stored.
        table: The table to read (exactly one of table and query).
        query: A SELECT to read; run in a READ ONLY transaction, so it cannot write.
        since_column: Pull incrementally: only rows whose column is at or past the last pull's watermark.
    """

    url: str
    table: str | None = None
    query: str | None = None
    since_column: str | None = None
    masked: str = field(init=False)

    def __post_init__(self) -> None:
        self.masked = check_url(self.url)
        if (self.table is None) == (self.query is None):
            raise DatabaseSourceError("give exactly one of --table and --query", source=self.masked,
                                      hint="e.g. --table events, or --query \"select * from events where shop = 3\"")
        if self.query is not None:
            self.query = self.query.strip().rstrip(";").strip()
            if not self.query:
                raise DatabaseSourceError("the --query is empty", source=self.masked)
        if self.table is not None and not self.table.strip():
            raise DatabaseSourceError("the --table name is empty", source=self.masked)

    @property
    def name(self) -> str:
        """The source as the manifest and messages show it: masked URL, then the table or query."""
        what = f"table {self.table}" if self.table else f"query {_short(self.query or '')}"
        return f"{self.masked} {what}"

    @property
    def key(self) -> str:
        """What a watermark belongs to: the masked URL, table or whole query, and the column."""
        what = f"table {self.table}" if self.table else f"query {self.query}"
        return f"{self.masked} {what} since {self.since_column}"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stored_watermark(batches: list[dict[str, Any]], source: DatabaseSource) -> dict[str, Any] | None:
    """The watermark of the last visible batch pulled from ``source`` by its since column, or None."""
    if not source.since_column:
        return None
    for batch in reversed(batches):
        mark = batch.get("watermark")
        if mark and mark.get("source") == source.key:
            return mark
    return None


@dataclass
class DatabasePull:
    """One pull of a database source: iterate :meth:`parts`; afterwards :attr:`watermark` is the new one."""

    source: DatabaseSource
    previous: dict[str, Any] | None = None  # the stored watermark to pull from
    mapping: Mapping[str, str] | None = None
    strict: bool = False
    tz: str = "UTC"
    chunk_rows: int = CHUNK_ROWS
    on_progress: Callable[[int, int, str], None] | None = None
    connect_timeout_s: int = 10
    watermark: dict[str, Any] | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def parts(self) -> Iterator[tuple[str, pd.DataFrame, IngestReport]]:
        """(source name, events, report) per chunk of the source's rows, validated as canonical events.

        Raises:
            DatabaseSourceError: the server cannot be reached or refuses the login, the table, query or a
                column is missing, or a column's type cannot be that canonical column (naming it).
        """
        import psycopg

        src = self.source
        try:
            conn = psycopg.connect(src.url, connect_timeout=self.connect_timeout_s, application_name="shopsight ingest")
        except psycopg.Error as exc:
            raise DatabaseSourceError(f"cannot connect: {self._reason(exc)}", source=src.masked,
                                      hint="check the host, port, user and password, and that the server is running") from None
        try:
            conn.read_only = True
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot: the count, the rows and the watermark agree
            names, types = self._describe(conn)
            where, params = self._since(names, types)
            base = self._relation()
            count = psycopg.sql.SQL("SELECT count(*) FROM ({}) AS shopsight_count")
            total = self._execute(conn, count.format(base + where), params).fetchone()[0]
            if params:  # how many rows sit at the watermark (re-read, and dropped again if already stored)
                at = self._since(names, types, op="=")[0]
                at_mark = self._execute(conn, count.format(base + at), params).fetchone()[0]
                if at_mark:
                    self.notes[WATERMARK_NOTE.format(column=src.since_column, value=params[0])] = int(at_mark)
            if self.on_progress is not None:
                self.on_progress(0, total, src.name)
            yield from self._stream(conn, base + where, params, names, types, total)
            conn.rollback()  # read-only: nothing to commit
        finally:
            conn.close()

    # --- the steps -------------------------------------------------------------------------
    def _relation(self) -> Any:
        from psycopg import sql

        if self.source.table:
            return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*self.source.table.split(".")))
        # Every statement is sent with parameters (maybe none), so a % of the query's own (LIKE 'a%') is doubled.
        return sql.SQL("SELECT * FROM ({}) AS shopsight_source").format(sql.SQL((self.source.query or "").replace("%", "%%")))

    def _execute(self, conn: Any, query: Any, params: tuple = ()) -> Any:
        """Run ``query``; PostgreSQL's refusals become errors that say what to fix."""
        import psycopg
        from psycopg import errors

        src = self.source
        try:
            return conn.execute(query, params)
        except errors.UndefinedTable as exc:
            conn.rollback()
            tables = ", ".join(self._tables(conn)) or "none"
            missing = src.table or self._reason(exc)
            raise DatabaseSourceError(f"no table {missing} in the database (tables: {tables})", source=src.name,
                                      hint="name a table with --table, schema.table for another schema") from None
        except errors.UndefinedColumn as exc:
            raise DatabaseSourceError(f"the query names a column the database lacks: {self._reason(exc)}", source=src.name) from None
        except errors.ReadOnlySqlTransaction as exc:
            raise DatabaseSourceError(f"the query tries to write ({self._reason(exc)}); --query must only read: it runs "
                                      "in a READ ONLY transaction", source=src.name) from None
        except errors.SyntaxError as exc:
            raise DatabaseSourceError(f"the query is not valid SQL: {self._reason(exc)}", source=src.name) from None
        except errors.InsufficientPrivilege as exc:
            raise DatabaseSourceError(f"permission denied: {self._reason(exc)}", source=src.name,
                                      hint="grant the user SELECT on the table") from None
        except psycopg.OperationalError as exc:
            raise DatabaseSourceError(f"the server failed: {self._reason(exc)}", source=src.name) from None
        except psycopg.Error as exc:
            raise DatabaseSourceError(f"the server refused the query: {self._reason(exc)}", source=src.name) from None

    def _tables(self, conn: Any) -> list[str]:
        rows = conn.execute(
            "SELECT CASE WHEN table_schema = 'public' THEN table_name ELSE table_schema || '.' || table_name END "
            "FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
        conn.rollback()
        return [r[0] for r in rows][:20]

    def _describe(self, conn: Any) -> tuple[list[str], dict[str, str]]:
        """The source's column names and, per column, its PostgreSQL type name; checked against the canonical schema."""
        from psycopg import sql

        src = self.source
        cur = self._execute(conn, sql.SQL("{} LIMIT 0").format(self._relation()))
        names = [d.name for d in cur.description]
        types = {}
        for d in cur.description:
            info = conn.adapters.types.get(d.type_code)
            types[d.name] = info.name if info is not None else f"type {d.type_code}"
        canonical = {dict(self.mapping or {}).get(n, n): n for n in names}
        found = ", ".join(names) or "none"
        missing = [c for c in MUST_PROVIDE if c not in canonical]
        if missing:
            absent = [s for s in (self.mapping or {}) if s not in names]
            raise DatabaseSourceError(
                f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} (found: {found})"
                + (f"; --map names {', '.join(repr(a) for a in absent)}, which the source does not have" if absent else ""),
                source=src.name, column=missing[0], hint=" ".join(f"--map {c}=YOUR_COLUMN" for c in missing),
            )
        for col, (allowed, wanted) in ALLOWED.items():
            raw = canonical.get(col)
            if raw is not None and types[raw] not in allowed:
                named = f"'{raw}'" + (f" (read as {col})" if raw != col else "")
                raise DatabaseSourceError(
                    f"column {named} is {types[raw]}; {col} must be {wanted}", source=src.name, column=raw,
                    hint=f"cast it in a --query, e.g. --query \"select *, {raw}::text as {col} from …\"" if wanted.startswith("text") else None,
                )
        if src.since_column is not None:
            if src.since_column not in names:
                raise DatabaseSourceError(f"no column '{src.since_column}' for --since-column (columns: {found})", source=src.name,
                                          column=src.since_column)
            if types[src.since_column] not in WATERMARK_TYPES:
                raise DatabaseSourceError(f"column '{src.since_column}' is {types[src.since_column]}; --since-column must be a "
                                          "timestamp, date, number or text that grows with new rows", source=src.name,
                                          column=src.since_column)
        return names, types

    def _since(self, names: list[str], types: dict[str, str], op: str = ">=") -> tuple[Any, tuple]:
        """The WHERE clause of an incremental pull (``>=`` the stored watermark), and its parameter."""
        from psycopg import sql

        col = self.source.since_column
        mark = self.previous
        if col is None or mark is None:
            return sql.SQL(""), ()
        if mark.get("type") != types[col]:
            raise DatabaseSourceError(
                f"column '{col}' is {types[col]} now but was {mark.get('type')} when its watermark ({mark.get('value')}) was stored",
                source=self.source.name, column=col, hint="undo the source's batches (`shopsight batches undo ID`) to pull it again from the start",
            )
        alias = sql.Identifier("shopsight_source") if self.source.query else None
        target = sql.SQL("{}.{}").format(alias, sql.Identifier(col)) if alias else sql.Identifier(col)
        where = sql.SQL(" WHERE {} " + op + " CAST(%s AS {})").format(target, sql.SQL(types[col]))
        return where, (mark["value"],)

    def _stream(self, conn: Any, query: Any, params: tuple, names: list[str], types: dict[str, str],
                total: int) -> Iterator[tuple[str, pd.DataFrame, IngestReport]]:
        """Fetch ``query`` through a server-side cursor ``chunk_rows`` at a time; validate each chunk."""
        import psycopg

        src = self.source
        col = src.since_column
        best: Any = None
        nulls = done = 0
        offset = 1  # errors name the row of the result, counted from 1
        previous = None if self.previous is None else self.previous["value"]
        with conn.cursor(name="shopsight_ingest") as cur:
            cur.itersize = self.chunk_rows
            try:
                cur.execute(query, params)
            except psycopg.Error as exc:
                raise DatabaseSourceError(f"the server refused the query: {self._reason(exc)}", source=src.name) from None
            while rows := cur.fetchmany(self.chunk_rows):
                raw = pd.DataFrame.from_records(rows, columns=names, coerce_float=False)
                if col is not None:
                    values = raw[col]
                    nulls += int(values.isna().sum())
                    present = values.dropna()
                    if len(present):
                        top = present.max()
                        best = top if best is None or top > best else best
                events, report = validate_events(raw, source=src.name, mapping=self.mapping, strict=self.strict, tz=self.tz,
                                                 row_offset=offset, allow_empty=True)
                offset += len(raw)
                done += len(raw)
                if self.on_progress is not None:
                    self.on_progress(done, max(total, done), src.name)
                yield src.name, events, report
        if col is not None:
            type_name = types[col]
            if best is None:
                self.watermark = self.previous  # nothing new: the old watermark stands
            else:
                value = _as_text(best)
                if previous is not None and _compare(type_name, previous, value) > 0:
                    value = previous
                self.watermark = {"source": src.key, "column": col, "type": type_name, "value": value}
            if nulls:
                self.notes[f"rows with no {col} (a later pull by {col} never reads such rows)"] = nulls

    def _reason(self, exc: BaseException) -> str:
        """The server's or driver's message, one line, with the password (should it appear) masked."""
        text = " ".join(str(exc).split())
        password = urlsplit(self.source.url).password
        if password:
            text = text.replace(password, "***")
        return text or type(exc).__name__


def _as_text(value: Any) -> str:
    """A watermark value as PostgreSQL reads it back with a cast: ISO 8601 for times, digits for numbers."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _compare(type_name: str | None, a: str, b: str) -> int:
    """-1, 0 or 1 as watermark text ``a`` is below, at or above ``b`` (of PostgreSQL type ``type_name``)."""
    if type_name in NUMBER_TYPES:
        x, y = float(a), float(b)
    elif type_name in TIME_TYPES:
        x, y = pd.Timestamp(a), pd.Timestamp(b)
        if (x.tzinfo is None) != (y.tzinfo is None):
            return 0
    else:
        x, y = a, b  # type: ignore[assignment]
    return (x > y) - (x < y)
