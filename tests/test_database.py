"""A PostgreSQL database as an event source (issue 18), against a real server on 127.0.0.1: a table
pulled incrementally by a watermark column (ties at the watermark neither lost nor doubled), a
read-only query, a server-side cursor read in chunks, and one clear error per bad source."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from servers import (  # tests/ is on sys.path
    PostgresServer,
    free_port,
    postgres_bin,
    postgres_server,
)
from typer.testing import CliRunner

from shopsight.behavior.database import (
    DatabasePull,
    DatabaseSource,
    DatabaseSourceError,
    mask_url,
)
from shopsight.behavior.ingest import batch_list, ingest_database, undo_batch
from shopsight.behavior.workspace import Workspace

psycopg = pytest.importorskip("psycopg")

_names = itertools.count(1)
COLUMNS = "id serial PRIMARY KEY, user_id text, ts timestamptz, event text, item_id text, price numeric(10, 2), quantity int"
FIRST = [  # (user, ts, event, item, price, quantity)
    ("u1", "2026-03-04 09:12:00+00", "view", "i1", 118.00, 1),
    ("u1", "2026-03-04 09:14:00+00", "purchase", "i1", 118.00, 1),
    ("u2", "2026-03-04 10:00:00+00", "view", "i2", 99.00, 1),
]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH; "
                    "`make setup` installs Debian's postgresql package, or set PG_BIN)")
    with postgres_server() as server:
        yield server


def _table(pg: PostgresServer, rows: list[tuple], columns: str = COLUMNS) -> str:
    """A new table holding ``rows``; its name."""
    name = f"events_{next(_names)}"
    with psycopg.connect(pg.url()) as conn:
        conn.execute(f"CREATE TABLE {name} ({columns})")
    if rows:
        _insert(pg, name, rows)
    return name


def _insert(pg: PostgresServer, table: str, rows: list[tuple]) -> None:
    with psycopg.connect(pg.url()) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (user_id, ts, event, item_id, price, quantity) VALUES (%s, %s, %s, %s, %s, %s)", rows)


def _everything(ws: Workspace) -> str:
    """Every text file of the workspace (manifest, rejected rows) and the Parquet bytes, as one string."""
    return "".join(p.read_bytes().decode("latin-1") for p in ws.root.rglob("*") if p.is_file())


def test_a_table_is_pulled_incrementally_by_its_watermark(pg: PostgresServer, workspace: Workspace) -> None:
    table = _table(pg, FIRST)
    _, first = ingest_database(workspace, pg.url(), table=table, since_column="ts")
    assert (first.rows_read, first.rows_kept, first.already_stored) == (3, 3, 0)
    mark = batch_list(workspace)[-1]["watermark"]
    assert (mark["column"], mark["type"], mark["value"]) == ("ts", "timestamptz", "2026-03-04T10:00:00+00:00")
    # Newer rows, and one that arrived late with the watermark's own time (a tie): it must not be lost.
    _insert(pg, table, [("u3", "2026-03-04 10:00:00+00", "view", "i2", 99.00, 1),
                        ("u1", "2026-03-05 08:00:00+00", "view", "i3", 20.00, 1),
                        ("u2", "2026-03-05 09:30:00+00", "purchase", "i2", 99.00, 2)])
    _, second = ingest_database(workspace, pg.url(), table=table, since_column="ts")
    # Only rows at or past the watermark were read: u2's 10:00 view again (already stored) and the three new rows.
    assert (second.rows_read, second.rows_kept, second.already_stored) == (4, 3, 1)
    assert second.notes["rows re-read at the watermark (ts = 2026-03-04T10:00:00+00:00); those already stored are counted as such"] == 2
    events = workspace.load_events()
    assert len(events) == 6 and not events.duplicated(["user_id", "ts", "event", "item_id"]).any()
    assert set(events.loc[events["user_id"] == "u1", "session_id"]) == {"u1-s1", "u1-s2"}  # sessions continue across pulls
    assert batch_list(workspace)[-1]["watermark"]["value"] == "2026-03-05T09:30:00+00:00"
    # Nothing new: nothing added, the watermark stands.
    _, third = ingest_database(workspace, pg.url(), table=table, since_column="ts")
    assert (third.rows_read, third.rows_kept, third.already_stored) == (1, 0, 1)
    assert batch_list(workspace)[-1]["watermark"]["value"] == "2026-03-05T09:30:00+00:00"
    # The password is used, never kept: not in the manifest, the batch files or the report.
    assert pg.password not in _everything(workspace) and pg.password not in json.dumps(third.to_dict())
    assert batch_list(workspace)[0]["source"] == f"{pg.url(password=False)} table {table}"


def test_undoing_a_pull_takes_its_watermark_with_it(pg: PostgresServer, workspace: Workspace) -> None:
    table = _table(pg, FIRST)
    ingest_database(workspace, pg.url(), table=table, since_column="ts")
    _insert(pg, table, [("u1", "2026-03-06 08:00:00+00", "view", "i3", 20.00, 1)])
    _, second = ingest_database(workspace, pg.url(), table=table, since_column="ts")
    undo_batch(workspace, second.batch)
    _, again = ingest_database(workspace, pg.url(), table=table, since_column="ts")
    assert again.rows_kept == 1 and len(workspace.load_events()) == 4


def test_a_query_source_reads_what_it_selects_and_cannot_write(pg: PostgresServer, workspace: Workspace) -> None:
    table = _table(pg, FIRST)
    _, report = ingest_database(workspace, pg.url(), query=f"SELECT user_id, ts, event, item_id FROM {table} WHERE event LIKE 'v%';",
                                since_column="ts")
    assert report.rows_kept == 2 and set(workspace.load_events()["event"]) == {"view"}
    assert batch_list(workspace)[-1]["source"].endswith(f"query SELECT user_id, ts, event, item_id FROM {table} WHERE event LIKE 'v%'")
    # The READ ONLY transaction refuses what writes, even inside a SELECT; a DELETE cannot even be wrapped.
    with pytest.raises(DatabaseSourceError, match=r"tries to write \(cannot execute nextval\(\) in a read-only transaction\)"):
        ingest_database(workspace, pg.url(), query=f"SELECT *, nextval('{table}_id_seq') AS n FROM {table}")
    with pytest.raises(DatabaseSourceError, match="the server refused the query: WITH clause containing a data-modifying"):
        ingest_database(workspace, pg.url(), query=f"WITH gone AS (DELETE FROM {table} RETURNING *) SELECT * FROM gone")
    with psycopg.connect(pg.url()) as conn:
        assert conn.execute(f"SELECT count(*), nextval('{table}_id_seq') FROM {table}").fetchone() == (3, 4)
    assert [b["id"] for b in batch_list(workspace)] == [1]


def test_rows_are_read_through_a_server_side_cursor_in_chunks(pg: PostgresServer) -> None:
    rows = [(f"u{i % 4}", f"2026-03-0{1 + i // 24} {i % 24:02d}:00:00+00", "view", f"i{i}", 1.0, 1) for i in range(50)]
    table = _table(pg, rows)
    seen: list[tuple[int, int]] = []
    pull = DatabasePull(DatabaseSource(pg.url(), table=table, since_column="id"), chunk_rows=20,
                        on_progress=lambda done, total, name: seen.append((done, total)))
    parts = pull.parts()
    _, events, _ = next(parts)
    with psycopg.connect(pg.url()) as conn:  # while the pull is paused: its backend is FETCHing from a cursor
        state = conn.execute("SELECT query, state FROM pg_stat_activity WHERE application_name = 'shopsight ingest'").fetchone()
    assert state[0].startswith("FETCH FORWARD 20 FROM") and state[1] == "idle in transaction"
    sizes = [len(events), *(len(e) for _, e, _ in parts)]
    assert sizes == [20, 20, 10] and seen == [(0, 50), (20, 50), (40, 50), (50, 50)]
    assert pull.watermark is not None and (pull.watermark["type"], pull.watermark["value"]) == ("int4", "50")


def test_the_cli_pulls_a_table_and_never_prints_the_password(pg: PostgresServer, tmp_path: Path) -> None:
    from shopsight.cli import app

    table = _table(pg, FIRST)
    args = ["ingest", "--from", pg.url(), "--table", table, "--since-column", "ts", "--workspace", str(tmp_path / "ws")]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Read 3 rows from {pg.url(password=False)} table {table}" in result.output
    assert "Watermark of ts: 2026-03-04T10:00:00+00:00" in result.output and "Batch 1: 3 new events" in result.output
    assert pg.password not in result.output


@pytest.mark.parametrize("case", ["scheme", "refused", "password", "table", "since", "type", "missing"])
def test_a_bad_source_is_one_clear_error_line(pg: PostgresServer, tmp_path: Path, case: str) -> None:
    from shopsight.cli import app

    table = _table(pg, FIRST)
    odd = _table(pg, [], {"type": "user_id text, ts boolean, event text", "missing": "user_id text, ts timestamptz"}[case]) \
        if case in ("type", "missing") else None
    url, extra = pg.url(), ["--table", table]
    expected = {
        "scheme": "not a PostgreSQL URL (scheme 'mysql'",
        "refused": "cannot connect: connection failed",
        "password": 'password authentication failed for user "shop"',
        "table": "table nope: no table nope in the database (tables: events_1, events_2,",
        "since": "no column 'inserted' for --since-column (columns: id, user_id, ts, event, item_id, price, quantity)",
        "type": f"table {odd}, column 'ts': column 'ts' is bool; ts must be a timestamp",
        "missing": f"table {odd}, column 'event': missing required column 'event' (found: user_id, ts)",
    }[case]
    if case == "scheme":
        url = pg.url().replace("postgresql://", "mysql://")
    elif case == "refused":
        url = f"postgresql://shop:{pg.password}@127.0.0.1:{free_port()}/shop"
    elif case == "password":
        url = pg.url().replace(pg.password, "wrong-" + pg.password)
    elif case == "table":
        extra = ["--table", "nope"]
    elif case == "since":
        extra += ["--since-column", "inserted"]
    elif case in ("type", "missing"):
        extra = ["--table", str(odd)]
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["ingest", "--from", url, *extra, "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().startswith("Error:"), result.output
    assert expected in " ".join(result.output.split()), result.output
    assert pg.password not in result.output
    assert not Workspace(tmp_path / "ws").exists()


def test_a_url_is_masked_wherever_its_password_sits() -> None:
    assert mask_url("postgresql://shop:pw@db:5432/shop") == "postgresql://shop@db:5432/shop"
    assert mask_url("postgresql://shop@db/shop?password=pw&sslmode=require") == "postgresql://shop@db/shop?sslmode=require"
    with pytest.raises(DatabaseSourceError, match="names no database"):
        DatabaseSource("postgresql://shop:pw@db", table="events")
    with pytest.raises(DatabaseSourceError, match="exactly one of --table and --query"):
        DatabaseSource("postgresql://shop:pw@db/shop")


def test_decimal_prices_and_integer_ids_arrive_as_canonical_types(pg: PostgresServer, workspace: Workspace) -> None:
    table = _table(pg, [], "user_id bigint, ts timestamp, event text, price numeric(10, 2), quantity smallint")
    with psycopg.connect(pg.url()) as conn:
        conn.execute(f"INSERT INTO {table} VALUES (42, '2026-03-04 09:12:00', 'purchase', 19.99, 2)")
    _, report = ingest_database(workspace, pg.url(), table=table)
    events = workspace.load_events()
    assert events.loc[0, ["user_id", "price", "quantity"]].tolist() == ["42", 19.99, 2]
    assert events.loc[0, "ts"] == pd.Timestamp("2026-03-04 09:12:00", tz="UTC") and report.naive_timestamps_as == "UTC"


def test_the_writer_lock_names_the_command_without_the_urls_password(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["shopsight", "ingest", "--from", "postgresql://shop:s3cret@db:5432/shop", "--table", "events"])
    with workspace.writer("ingest"):
        held = workspace.lock_path.read_text()
        assert "s3cret" not in held and "postgresql://shop@db:5432/shop" in held
        assert "postgresql://shop@db:5432/shop" in (workspace.lock_holder() or "")
