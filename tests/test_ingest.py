"""Ingest into a workspace: personal data never stored raw, ids pseudonymized consistently,
texts bounded, files over the row or memory budget refused before they are read."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shopsight.behavior.events import IngestLimitError, IngestLimits, estimate_ingest
from shopsight.behavior.ingest import KEY_FILE, PrivacyKeyError, ingest_file, workspace_key
from shopsight.behavior.privacy import pseudonym
from shopsight.behavior.workspace import Workspace

HEADER = "user_id,ts,event,item_id,category,price,quantity,session_id,device,text"
ROWS = [
    "alice@x.com,2026-03-04T09:12:00Z,view,i1,Audio,118.00,1,alice@x.com-s1,Alice's iPhone +1 415 555 0134,",
    "alice@x.com,2026-03-04T09:14:00Z,search,,,,,alice@x.com-s1,Alice's iPhone +1 415 555 0134,call me 4155550132",
    "Alice@X.com,2026-03-06T18:00:00Z,purchase,i1,Audio,118.00,1,Alice@X.com-s2,desktop,",
    "u00042,2026-03-05T10:00:00Z,purchase,i2,Audio,59.90,1,u00042-s1,desktop,great sound for $59.90",
    "+14155550199,2026-03-05T11:00:00Z,view,i3,Phones,99.00,1,,mobile,",
]


def _csv(tmp_path: Path, rows: list[str], name: str = "events.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _stored(ws: Workspace) -> pd.DataFrame:
    return ws.load_events()


def _stored_bytes(ws: Workspace) -> bytes:
    return b"".join(path.read_bytes() for path in ws.event_files())


def test_a_phone_in_the_device_field_is_never_stored(tmp_path: Path, workspace: Workspace) -> None:
    _, report = ingest_file(workspace, _csv(tmp_path, ROWS))
    stored = _stored(workspace)
    assert "Alice's iPhone [phone]" in set(stored["device"])
    raw = _stored_bytes(workspace)
    assert b"415 555 0134" not in raw and b"4155550132" not in raw
    assert report.notes["device: personal data masked"] == 2
    assert report.notes["text: personal data masked"] == 1
    assert "great sound for $59.90" in set(stored["text"].dropna())  # prices stay readable


def test_an_email_user_id_becomes_one_pseudonym_in_every_column(tmp_path: Path, workspace: Workspace) -> None:
    events, report = ingest_file(workspace, _csv(tmp_path, ROWS))
    key = workspace_key(workspace)
    alice = pseudonym("alice@x.com", key)
    stored = _stored(workspace)
    assert not stored["user_id"].str.contains("@").any()
    alice_rows = stored[stored["user_id"] == alice]
    assert len(alice_rows) == 3  # "Alice@X.com" is the same person
    # Session ids that embed the address take the pseudonym's session ids, whatever the case.
    assert set(alice_rows["session_id"]) == {f"{alice}-s1", f"{alice}-s2"}
    assert "u00042" in set(stored["user_id"])  # ids that are no personal data stay as they are
    assert pseudonym("+14155550199", key) in set(stored["user_id"])
    assert report.notes["user_id: e-mail/phone replaced by a pseudonym"] == 4
    assert report.notes["session_id: e-mail/phone replaced by a pseudonym"] == 3
    assert b"alice@x.com" not in _stored_bytes(workspace).lower()


def test_pseudonyms_are_stable_across_ingests_and_differ_between_workspaces(tmp_path: Path) -> None:
    path = _csv(tmp_path, ROWS)
    first, second = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    ingest_file(first, path)
    ids_before = set(_stored(first)["user_id"])
    ingest_file(first, path)
    assert set(_stored(first)["user_id"]) == ids_before
    ingest_file(second, path)
    assert set(_stored(second)["user_id"]) != ids_before
    key_file = first.root / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_damaged_key_is_refused_naming_the_file(workspace: Workspace) -> None:
    workspace.root.mkdir(parents=True)
    (workspace.root / KEY_FILE).write_text("not a key")
    with pytest.raises(PrivacyKeyError, match=KEY_FILE):
        workspace_key(workspace)


def test_long_text_is_cut_masked_first_and_counted(tmp_path: Path, workspace: Workspace) -> None:
    limit = 200
    # An address straddling the cut must not survive in part.
    text = "x" * (limit - 5) + " bob.secret@example.com " + "y" * 5000
    rows = [*ROWS[:1], f"u00043,2026-03-05T10:00:00Z,review,i2,Audio,,,,desktop,{text}"]
    _, report = ingest_file(workspace, _csv(tmp_path, rows), limits=IngestLimits(max_text_chars=limit))
    stored = _stored(workspace)
    kept = stored.loc[stored["user_id"] == "u00043", "text"].iloc[0]
    assert len(kept) <= limit and kept.endswith("…")
    assert "bob" not in kept and "example" not in kept and "@" not in kept
    assert report.notes[f"text: cut to {limit:,} characters (masked first)"] == 1


def test_rejected_rows_are_stored_masked(tmp_path: Path, workspace: Workspace) -> None:
    rows = [*ROWS, "carol@y.org,not a time,view,i1,Audio,1,1,,mobile,ring 07700 900123"]
    _, report = ingest_file(workspace, _csv(tmp_path, rows))
    rejected = pd.read_csv(workspace.rejected_dir / f"batch-{report.batch:06d}.csv", dtype=str)
    assert len(rejected) == 1
    flat = " ".join(str(v) for v in rejected.iloc[0].tolist())
    assert "carol" not in flat and "07700" not in flat and "[email]" in flat
    assert report.notes["rejected rows: personal data masked (cells)"] == 2


def _bomb_parquet(path: Path, rows: int, text_bytes: int = 1000) -> Path:
    """Few MB on disk, ``rows`` x ``text_bytes`` in memory: one repeated, dictionary-encoded text."""
    indices = pa.array([0] * rows, type=pa.int32())
    table = pa.table(
        {
            "user_id": pa.DictionaryArray.from_arrays(indices, pa.array(["u00001"])),
            "ts": pa.array([0] * rows, type=pa.int64()),
            "event": pa.DictionaryArray.from_arrays(indices, pa.array(["view"])),
            "text": pa.DictionaryArray.from_arrays(indices, pa.array(["x" * text_bytes])),
        }
    )
    pq.write_table(table, path)
    return path


def test_a_small_parquet_file_that_expands_past_the_memory_budget_is_refused_before_reading(
    tmp_path: Path, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The red-team file: 2M rows x 5 KB of text in a few MB of Parquet. Ingest reads it 250,000 rows
    # at a time, so what must fit is one chunk: 1.25 GB of text, about 5 GB once read.
    path = _bomb_parquet(tmp_path / "bomb.parquet", 2_000_000, text_bytes=5000)
    assert path.stat().st_size < 10_000_000

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read despite being over budget")

    monkeypatch.setattr(pd, "read_parquet", never)
    with pytest.raises(IngestLimitError) as err:
        ingest_file(workspace, path)
    message = str(err.value)
    assert "bomb.parquet" in message and "ingest memory budget of 4,096 MB" in message
    assert "SHOPSIGHT_INGEST_MAX_MEMORY_MB=" in message
    assert not workspace.exists()


def test_the_memory_budget_is_a_setting(tmp_path: Path, workspace: Workspace) -> None:
    path = _bomb_parquet(tmp_path / "small.parquet", 20_000, text_bytes=100)
    with pytest.raises(IngestLimitError, match="SHOPSIGHT_INGEST_MAX_MEMORY_MB"):
        ingest_file(workspace, path, limits=IngestLimits(max_memory_mb=5))
    estimate = estimate_ingest(path)
    assert (estimate.rows, estimate.columns, estimate.text_bytes) == (20_000, 4, 20_000 * (6 + 4 + 100))


def test_a_compressed_csv_bomb_is_refused_without_reading_it_all(tmp_path: Path, workspace: Workspace) -> None:
    path = tmp_path / "events.csv.gz"
    line = ("u1,2026-03-04T09:12:00Z,review,i1,Audio,1,1,,mobile," + "x" * 1000 + "\n").encode()
    with gzip.open(path, "wb") as fh:
        fh.write(HEADER.encode() + b"\n")
        for _ in range(50):
            fh.write(line * 1000)  # 50 MB expanded, a few KB compressed
    assert path.stat().st_size < 1_000_000
    with pytest.raises(IngestLimitError, match="over the ingest memory budget of 20 MB"):
        ingest_file(workspace, path, limits=IngestLimits(max_memory_mb=20))


def test_too_many_rows_are_refused_naming_the_limit(tmp_path: Path, workspace: Workspace) -> None:
    with pytest.raises(IngestLimitError) as err:
        ingest_file(workspace, _csv(tmp_path, ROWS), limits=IngestLimits(max_rows=3))
    assert "5 rows, over the ingest row limit of 3" in str(err.value)
    assert "SHOPSIGHT_INGEST_MAX_ROWS=" in str(err.value)


def test_csv_estimate_counts_rows_and_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, ROWS)
    estimate = estimate_ingest(path)
    assert (estimate.rows, estimate.columns, estimate.text_bytes) == (5, 10, path.stat().st_size)


def test_limits_come_from_the_environment_and_flags_win() -> None:
    env = {"SHOPSIGHT_INGEST_MAX_ROWS": "1_000", "SHOPSIGHT_INGEST_MAX_MEMORY_MB": "512"}
    limits = IngestLimits.from_env(env, max_text_chars=50)
    assert (limits.max_rows, limits.max_memory_mb, limits.max_text_chars) == (1000, 512, 50)
    assert IngestLimits.from_env({}) == IngestLimits()
    with pytest.raises(ValueError, match="SHOPSIGHT_INGEST_MAX_TEXT_CHARS='lots'"):
        IngestLimits.from_env({"SHOPSIGHT_INGEST_MAX_TEXT_CHARS": "lots"})


def test_a_format_is_checked_on_the_files_it_reads_not_its_whole_folder(tmp_path: Path) -> None:
    from shopsight.behavior.adapters import get_adapter
    from shopsight.behavior.events import check_ingest_limits

    adapter = get_adapter("completejourney")
    folder = tmp_path / "cj"
    folder.mkdir()
    (folder / "transactions.csv").write_text("household_id,basket_id\n1,2\n")
    (folder / "products.csv").write_text("product_id,product_category\n1,FRUIT\n")
    _bomb_parquet(folder / "promotions.parquet", 200_000)  # a table ingest never reads
    limits = IngestLimits(max_memory_mb=50)
    assert [p.name for p in adapter.input_files(folder)] == ["transactions.csv", "products.csv"]
    check_ingest_limits(adapter.input_files(folder), limits)
    with pytest.raises(IngestLimitError):
        check_ingest_limits(folder, limits)
    # The copy the package ships (1.47M transactions; its promotions table has 20M rows)
    # fits the default limits.
    packaged = adapter.packaged_path()
    if packaged is not None:
        estimate = check_ingest_limits(adapter.input_files(packaged), IngestLimits())
        assert 1_400_000 < estimate.rows < 2_000_000
