"""Append-only ingest in batches (issue 18): ingests add up, repeats add nothing and are counted,
a batch can be undone exactly, a killed ingest leaves the workspace as it was, one writer at a
time, --replace says what it discards, strict mode and rejected rows, folders and globs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shopsight.behavior.events import EventDataError, read_events, read_table
from shopsight.behavior.features import sessionize
from shopsight.behavior.ingest import batch_list, ingest_file, undo_batch
from shopsight.behavior.workspace import Workspace, WorkspaceBusyError, WorkspaceError

REPO = Path(__file__).resolve().parents[1]
HEADER = "user_id,ts,event,item_id,category,price,quantity,session_id,order_id"
DAY1 = [
    "u1,2026-03-04T09:12:00Z,view,i1,Audio,118.00,1,,",
    "u1,2026-03-04T09:14:00Z,add_to_cart,i1,Audio,118.00,1,,",
    "u1,2026-03-04T09:15:00Z,purchase,i1,Audio,118.00,1,,o1",
    "u2,2026-03-04T10:00:00Z,view,i2,Phones,99.00,1,u2-web-1,",
]
DAY2 = [
    "u1,2026-03-04T09:15:00Z,purchase,i1,Audio,118.00,1,,o1",  # already stored on day 1
    "u1,2026-03-04T09:30:00Z,view,i3,Audio,20.00,1,,",  # within 30 min of day 1's last event: same session
    "u1,2026-03-05T08:00:00Z,view,i3,Audio,20.00,1,,",  # a new session, numbered after day 1's
    "u3,2026-03-05T11:00:00Z,purchase,i2,Phones,99.00,2,,o2",
    "u3,2026-03-05T11:01:00Z,purchase,i2,Phones,99.00,0,,o3",  # quantity 0: rejected
]


def _csv(folder: Path, name: str, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _files(ws: Workspace) -> list[str]:
    """Every file in the workspace but the lock and the key (what a kill could leave behind)."""
    return sorted(str(p.relative_to(ws.root)) for p in ws.root.rglob("*") if p.is_file() and p.name not in (".lock", "privacy.key"))


def test_two_ingests_add_up(tmp_path: Path, workspace: Workspace) -> None:
    _, first = ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    _, second = ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    events = workspace.load_events()
    assert (first.batch, second.batch) == (1, 2)
    assert len(events) == 4 + 3  # day 2: one already stored, one rejected
    assert second.already_stored == 1 and second.rows_rejected == 1 and second.rows_kept == 3
    assert second.rows_read == second.rows_kept + second.duplicates + second.already_stored + second.rows_rejected
    assert [(b["id"], b["accepted"], b["rejected"], b["duplicate"]) for b in batch_list(workspace)] == [(1, 4, 0, 0), (2, 3, 1, 1)]
    assert workspace.read_manifest()["summary"]["events"] == 7
    # Sessions continue across batches: one id for a session spanning both, the next number after it.
    u1 = events[events["user_id"] == "u1"].set_index("ts")["session_id"]
    assert u1[pd.Timestamp("2026-03-04T09:30:00Z")] == u1[pd.Timestamp("2026-03-04T09:12:00Z")] == "u1-s1"
    assert u1[pd.Timestamp("2026-03-05T08:00:00Z")] == "u1-s2"
    assert events["user_id"].is_monotonic_increasing  # the union is sorted by user and time, as one file is


def test_the_same_file_twice_adds_nothing_and_reports_the_duplicates(tmp_path: Path, workspace: Workspace) -> None:
    path = _csv(tmp_path, "day1.csv", DAY1)
    ingest_file(workspace, path)
    before = workspace.load_events()
    events, report = ingest_file(workspace, path)
    assert len(events) == 0 and report.already_stored == 4 and report.rows_kept == 0
    pd.testing.assert_frame_equal(workspace.load_events(), before)
    assert batch_list(workspace)[-1]["duplicate"] == 4 and batch_list(workspace)[-1]["accepted"] == 0


def test_undo_restores_the_earlier_state_exactly(tmp_path: Path, workspace: Workspace) -> None:
    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    before, summary = workspace.load_events(), workspace.read_manifest()["summary"]
    _, report = ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    assert (workspace.rejected_dir / f"batch-{report.batch:06d}.csv").exists()
    record = undo_batch(workspace, report.batch)
    assert record["id"] == report.batch
    pd.testing.assert_frame_equal(workspace.load_events(), before)
    assert workspace.read_manifest()["summary"] == summary
    assert [b["id"] for b in batch_list(workspace)] == [1]
    assert _files(workspace) == ["events/batch-000001.parquet", "manifest.json"]
    with pytest.raises(WorkspaceError, match=r"no batch 7 .*batches: 1"):
        undo_batch(workspace, 7)


def test_replace_reports_how_many_events_it_discards(tmp_path: Path, workspace: Workspace) -> None:
    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    result = CliRunner().invoke(_app(), ["ingest", str(tmp_path / "day1.csv"), "--replace", "--workspace", str(workspace.root)])
    assert result.exit_code == 0, result.output
    assert "--replace discarded 7 stored events" in result.output
    assert len(workspace.load_events()) == 4
    assert [b["id"] for b in batch_list(workspace)] == [3]  # ids are never reused
    assert _files(workspace) == ["events/batch-000003.parquet", "manifest.json"]


def test_a_workspace_from_before_batches_is_read_and_kept_as_batch_0(tmp_path: Path, workspace: Workspace) -> None:
    old, _ = read_events(_csv(tmp_path, "day1.csv", DAY1))
    workspace.save_events(sessionize(old))
    assert [b["id"] for b in batch_list(workspace)] == [0]
    _, report = ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    assert report.already_stored == 1 and len(workspace.load_events()) == 7
    undo_batch(workspace, 0)
    assert not workspace.events_path.exists() and len(workspace.load_events()) == 3


def test_the_query_engine_reads_every_batch(tmp_path: Path, workspace: Workspace) -> None:
    from shopsight.behavior.query import QueryEngine

    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    with QueryEngine(workspace) as engine:
        assert engine.describe()["data_last"] == "2026-03-04"
        _, report = ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
        assert engine.describe()["data_last"] == "2026-03-05"  # the new batch is seen without a restart
        undo_batch(workspace, report.batch)
        assert engine.describe()["data_last"] == "2026-03-04"


def test_the_batches_command_lists_and_undoes(tmp_path: Path, workspace: Workspace) -> None:
    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    runner, ws = CliRunner(), ["--workspace", str(workspace.root)]
    listed = runner.invoke(_app(), ["batches", *ws, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(b["id"], b["accepted"]) for b in json.loads(listed.output)] == [(1, 4), (2, 3)]
    table = runner.invoke(_app(), ["batches", *ws])
    assert "day2.csv" in table.output and "7 events in 2 batches" in table.output
    undone = runner.invoke(_app(), ["batches", "undo", "2", *ws])
    assert undone.exit_code == 0 and "Removed batch 2" in undone.output and "4 events remain" in undone.output
    missing = runner.invoke(_app(), ["batches", "undo", "2", *ws])
    assert missing.exit_code == 2 and "Error: no batch 2" in missing.output


# --- a killed ingest ----------------------------------------------------------------------------

# Runs one ingest and SIGKILLs itself just before or just after its Nth rename (os.replace): the
# batch file (1), its rejected rows (2), the manifest that publishes them (3).
KILLED_INGEST = """
import os, signal, sys
from shopsight.behavior.ingest import ingest_file
from shopsight.behavior.workspace import Workspace

root, path, when, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
real, calls = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    calls[0] += 1
    if when == "before" and calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    if when == "after" and calls[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
ingest_file(Workspace.at(root), path)
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


@pytest.mark.parametrize("when,nth", [("before", 1), ("after", 1), ("before", 2), ("after", 2), ("before", 3)])
def test_a_killed_ingest_leaves_the_workspace_as_before_and_a_rerun_is_clean(tmp_path: Path, when: str, nth: int) -> None:
    day1, day2 = _csv(tmp_path, "day1.csv", DAY1), _csv(tmp_path, "day2.csv", DAY2)
    ws = Workspace(tmp_path / "ws")
    ingest_file(ws, day1)
    before, manifest = ws.load_events(), ws.read_manifest()
    killed = _run(["-c", KILLED_INGEST, str(ws.root), str(day2), when, str(nth)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pd.testing.assert_frame_equal(ws.load_events(), before)
    assert ws.read_manifest() == manifest
    assert any(name != "events/batch-000001.parquet" and name != "manifest.json" for name in _files(ws))  # it left something
    ingest_file(ws, day2)  # the next writer clears what the killed one left, and re-running is safe
    clean = Workspace(tmp_path / "clean")
    ingest_file(clean, day1)
    ingest_file(clean, day2)
    pd.testing.assert_frame_equal(ws.load_events(), clean.load_events())
    assert _files(ws) == _files(clean)


def test_an_ingest_killed_after_publishing_is_complete(tmp_path: Path) -> None:
    day1, day2 = _csv(tmp_path, "day1.csv", DAY1), _csv(tmp_path, "day2.csv", DAY2)
    ws = Workspace(tmp_path / "ws")
    ingest_file(ws, day1)
    killed = _run(["-c", KILLED_INGEST, str(ws.root), str(day2), "after", "3"])
    assert killed.returncode == -signal.SIGKILL
    assert len(ws.load_events()) == 7 and [b["id"] for b in batch_list(ws)] == [1, 2]


# --- one writer at a time -----------------------------------------------------------------------


HOLDER = """
import sys, time
from shopsight.behavior.workspace import Workspace

with Workspace.at(sys.argv[1]).writer("holder"):
    print("held", flush=True)
    time.sleep(60)  # until the test kills it
"""


def test_a_second_writer_fails_naming_the_holder(tmp_path: Path) -> None:
    day1 = _csv(tmp_path, "day1.csv", DAY1)
    ws = Workspace(tmp_path / "ws")
    with ws.writer("test holder"):
        result = _run(["cli.py", "ingest", str(day1), "--workspace", str(ws.root)], SHOPSIGHT_LOCK_TIMEOUT_S="0.3")
    assert result.returncode == 2, result.stderr
    assert f"is being written by pid {os.getpid()} (test holder" in result.stderr and "SHOPSIGHT_LOCK_TIMEOUT_S" in result.stderr
    assert not ws.exists()
    with ws.writer("me"), ws.writer("me again"):  # reentrant in one process
        pass
    with pytest.raises(WorkspaceBusyError):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(ws.root)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            with ws.writer("second", timeout=0.2):
                pass
        finally:
            holder.kill()
            holder.wait()


def test_two_concurrent_writers_never_corrupt_the_workspace(tmp_path: Path) -> None:
    rows_a = [f"a{u},2026-03-0{1 + d}T{h:02d}:00:00Z,view,i{h},Audio,1,1,," for u in range(60) for d in range(5) for h in range(24)]
    rows_b = [f"b{u},2026-03-0{1 + d}T{h:02d}:30:00Z,view,i{h},Audio,1,1,," for u in range(60) for d in range(5) for h in range(24)]
    a, b = _csv(tmp_path, "a.csv", rows_a), _csv(tmp_path, "b.csv", rows_b)
    ws = Workspace(tmp_path / "ws")
    procs = [
        subprocess.Popen([sys.executable, "cli.py", "ingest", str(p), "--workspace", str(ws.root), "--json"], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for p in (a, b)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(json.loads(out)["report"]["batch"] for out, _ in outs) == [1, 2]
    events = ws.load_events()
    assert len(events) == len(rows_a) + len(rows_b) and not events.duplicated().any()
    assert ws.read_manifest()["summary"]["events"] == len(events)
    assert sorted(b["accepted"] for b in batch_list(ws)) == [len(rows_a), len(rows_b)]
    assert _files(ws) == ["events/batch-000001.parquet", "events/batch-000002.parquet", "manifest.json"]


# --- strict mode and rejected rows --------------------------------------------------------------


@pytest.mark.parametrize("row,reason,column", [
    ("u9,2026-03-05T11:01:00Z,purchase,i2,Phones,99.00,0,,o3", "purchase with quantity 0", "quantity"),
    ("u9,2026-03-05T11:01:00Z,view,i2,Pho\x00nes,99.00,1,,", "NUL byte inside the field", "category"),
])
def test_strict_refuses_and_otherwise_rejects_with_the_reason(tmp_path: Path, workspace: Workspace, row: str, reason: str, column: str) -> None:
    path = _csv(tmp_path, "bad.csv", [*DAY1, row])
    with pytest.raises(EventDataError, match=rf"bad.csv, row 6, column '{column}': {reason}"):
        ingest_file(workspace, path, strict=True)
    assert not workspace.exists()
    _, report = ingest_file(workspace, path)
    assert report.rows_rejected == 1 and report.rejected_reasons[0].reason == reason
    rejected = pd.read_csv(workspace.rejected_dir / f"batch-{report.batch:06d}.csv", dtype=str)
    assert rejected[["row", "reason"]].values.tolist() == [["6", reason]]
    assert len(workspace.load_events()) == 4 and batch_list(workspace)[0]["rejected"] == 1


# --- folders and globs --------------------------------------------------------------------------


def test_a_folder_and_a_glob_are_read_file_by_file_into_one_batch(tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    _csv(folder, "day1.csv", DAY1)
    read_table(_csv(tmp_path, "day2.csv", DAY2)).to_parquet(folder / "day2.parquet")
    (folder / "README.md").write_text("not events")
    ws = Workspace(tmp_path / "ws")
    seen: list[tuple[int, int, str]] = []
    _, report = ingest_file(ws, folder, on_progress=lambda done, total, path: seen.append((done, total, path.name)))
    assert seen == [(0, 9, "day1.csv"), (4, 9, "day1.csv"), (4, 9, "day2.parquet"), (9, 9, "day2.parquet")]
    assert report.rows_read == 9 and len(ws.load_events()) == 7 and [b["id"] for b in batch_list(ws)] == [1]
    assert report.already_stored == 1  # day 2 repeats one of day 1's events, across the two files
    globbed = Workspace(tmp_path / "globbed")
    ingest_file(globbed, str(folder / "day*"))
    pd.testing.assert_frame_equal(globbed.load_events(), ws.load_events())


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_file_read_in_chunks_gives_what_it_gives_read_whole(tmp_path: Path, suffix: str) -> None:
    rows = [*DAY1, *DAY2, "u4,not a time,view,i1,Audio,1,1,,", "u1,2026-03-04T09:12:00Z,view,i1,Audio,118.00,1,,"]
    path = _csv(tmp_path, "all.csv", rows)
    if suffix == "parquet":
        read_table(path).to_parquet(path := tmp_path / "all.parquet")
    whole, report = read_events(path)
    chunks: list[int] = []
    chunked, chunk_report = read_events(path, chunk_rows=3, on_rows=chunks.append)
    assert chunks == [3, 3, 3, 2]
    pd.testing.assert_frame_equal(chunked, whole)
    # Errors still name the file's own rows; duplicates inside a chunk (rows 4 and 5) and across
    # chunks (rows 2 and 12) are both found.
    assert [(r.reason, r.first_rows) for r in chunk_report.rejected_reasons] == [(r.reason, r.first_rows) for r in report.rejected_reasons]
    assert {r.reason: r.first_rows for r in report.rejected_reasons} == {"purchase with quantity 0": [10], "unparsable timestamp": [11]}
    assert (report.duplicates, chunk_report.duplicates) == (2, 2) and len(whole) == len(rows) - 4
    assert (chunk_report.rows_read, chunk_report.rows_kept) == (report.rows_read, report.rows_kept)


def test_a_glob_matching_nothing_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["ingest", str(tmp_path / "nope-*.csv"), "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "Error:" in result.output and "the pattern matches no CSV or Parquet file" in result.output
    assert "Traceback" not in result.output


def _app():
    from shopsight.cli import app

    return app


# --- freshness ----------------------------------------------------------------------------------


def test_models_show_the_events_and_days_since_each_models_data_cutoff(tmp_path: Path, workspace: Workspace) -> None:
    import torch

    from shopsight.behavior.models import registry

    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    card = {"metrics": {}, "data_cutoff": workspace.load_events()["ts"].max().isoformat()}  # 2026-03-04 10:00
    registry.save_model(workspace, "churn", state_dict={"w": torch.zeros(2)}, spec={"features": []}, card=card)
    fresh = registry.add_freshness(workspace, registry.list_models(workspace))[0]["freshness"]
    assert (fresh["newer_events"], fresh["days_since_cutoff"]) == (0, 0.0)
    ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))  # two events after the cutoff, the last 25 h after it
    fresh = registry.add_freshness(workspace, registry.list_models(workspace))[0]["freshness"]
    assert fresh == {"data_cutoff": "2026-03-04T10:00:00+00:00", "newer_events": 2, "days_since_cutoff": 1.0}
    runner, ws = CliRunner(env={"COLUMNS": "300"}), ["--workspace", str(workspace.root)]
    listed = runner.invoke(_app(), ["models", *ws, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)[0]["freshness"] == fresh
    table = runner.invoke(_app(), ["models", *ws])
    header = next(line for line in table.output.splitlines() if "newer events" in line)
    row = next(line for line in table.output.splitlines() if "churn" in line)
    cells = [c.strip() for c in row.split("│")]
    names = [c.strip() for c in header.split("┃")]
    assert (cells[names.index("data to")], cells[names.index("newer events")], cells[names.index("days since")]) == ("2026-03-04", "2", "1")


def test_a_trained_model_card_stores_its_data_cutoff(tmp_path: Path, workspace: Workspace) -> None:
    from test_index import make_events

    from shopsight.behavior.models import registry, train_model
    from shopsight.behavior.models.common import TrainSettings

    make_events(users=40, seed=1).to_parquet(tmp_path / "shop.parquet")
    ingest_file(workspace, tmp_path / "shop.parquet")
    result = train_model(workspace, "churn", settings=TrainSettings(epochs=1), horizon_days=7)
    assert result["card"]["data_cutoff"] == workspace.load_events()["ts"].max().isoformat()
    assert result["card"]["data_batches"] == [1]
    assert set(result["card"]["feature_profile"]) >= {"recency_days", "monetary"}
    row = registry.add_freshness(workspace, registry.list_models(workspace))[0]
    assert row["drift"]["recency_days"] == {"psi": 0.0, "verdict": "stable"} and "feature_profile" not in row


def test_an_optional_column_one_batch_lacks_reads_as_missing(tmp_path: Path, workspace: Workspace) -> None:
    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    (tmp_path / "devices.csv").write_text("user_id,ts,event,device\nu5,2026-03-06T10:00:00Z,view,mobile\n")
    ingest_file(workspace, tmp_path / "devices.csv")
    events = workspace.load_events(columns=["user_id", "ts", "device"])
    assert list(events.columns) == ["user_id", "ts", "device"]
    assert events.set_index("user_id")["device"].isna().to_dict() == {"u1": True, "u2": True, "u5": False}
    with pytest.raises(WorkspaceError, match="lacks the column country"):
        workspace.load_events(columns=["user_id", "country"])


WRITE_BATCHES = """
import sys
from shopsight.behavior.ingest import ingest_file, undo_batch
from shopsight.behavior.workspace import Workspace

ws = Workspace.at(sys.argv[1])
for path in sys.argv[2:]:
    ingest_file(ws, path)
undo_batch(ws, 2)
"""


def test_a_reader_sees_each_batch_whole_or_not_at_all(tmp_path: Path) -> None:
    # Batches of 1, 2, 4, 8 and 16 events: every sum of some of them is a different number, so each
    # count a reader sees says exactly which batches it saw.
    paths = [_csv(tmp_path, f"b{k}.csv", [f"k{k}u{i},2026-03-0{k + 1}T10:00:00Z,view,i1,Audio,1,1,," for i in range(2**k)]) for k in range(5)]
    ws = Workspace(tmp_path / "ws")
    ingest_file(ws, paths[0])
    writer = subprocess.Popen([sys.executable, "-c", WRITE_BATCHES, str(ws.root), *map(str, paths[1:])], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    seen = set()
    while writer.poll() is None:
        seen.add(len(ws.load_events(columns=["user_id", "ts", "event"])))
    assert writer.returncode == 0, writer.stderr.read()
    prefixes = {1, 3, 7, 15, 31, 31 - 2}  # each batch appended in turn, then batch 2 (2 events) undone
    assert seen <= prefixes and len(seen) >= 2, seen
    assert len(ws.load_events()) == 29


def test_the_demo_replaces_earlier_batches_with_its_one_file(tmp_path: Path, workspace: Workspace) -> None:
    from shopsight.behavior.demo import build_demo_workspace

    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    build_demo_workspace(workspace, users=20, days=14, progress=False)
    assert [(b["id"], b["file"]) for b in batch_list(workspace)] == [(0, "events.parquet")]
    assert not list(workspace.events_dir.glob("*.parquet"))
    assert not workspace.load_events()["user_id"].isin(["u1", "u2"]).any()


# --- drift --------------------------------------------------------------------------------------


def test_psi_is_zero_for_the_same_users_and_large_for_a_shifted_population() -> None:
    from test_index import make_events

    from shopsight.behavior.drift import drift_report, feature_profile, psi, verdict
    from shopsight.behavior.features import user_features

    events = make_events(users=200, seed=3)
    profile = feature_profile(events)
    assert set(profile) == {"recency_days", "frequency", "monetary", "n_sessions", "velocity"}
    same = drift_report(profile, user_features(events))
    assert all(d["psi"] == 0 and d["verdict"] == "stable" for d in same.values())
    # The same shop 60 days later with no new events: every user's recency grows by 60 days.
    later = user_features(events, asof=events["ts"].max() + pd.Timedelta(days=60))
    moved = drift_report(profile, later)
    assert moved["recency_days"]["psi"] > 0.25 and moved["recency_days"]["verdict"] == "drift: retrain"
    assert moved["frequency"]["psi"] == 0  # what is counted over all time has not moved
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0 and verdict(0.05) == "stable" and verdict(0.2) == "moderate shift"


def test_train_if_stale_retrains_only_after_newer_events(tmp_path: Path, workspace: Workspace) -> None:
    from test_index import make_events

    from shopsight.behavior.models.registry import latest_version

    events = make_events(users=40, seed=1)
    events.to_parquet(tmp_path / "shop.parquet")
    ingest_file(workspace, tmp_path / "shop.parquet")
    runner = CliRunner(env={"COLUMNS": "200"})
    args = ["train", "churn", "--if-stale", "--horizon", "7", "--epochs", "1", "--workspace", str(workspace.root)]
    first = runner.invoke(_app(), args)
    assert first.exit_code == 0, first.output
    assert "churn: training (not trained)" in first.output and latest_version(workspace, "churn") == "v1"
    again = runner.invoke(_app(), args)
    assert "churn: fresh, not retrained" in again.output and latest_version(workspace, "churn") == "v1"
    later = events[events["user_id"].isin(events["user_id"].unique()[:5])].assign(ts=lambda d: d["ts"] + pd.Timedelta(days=90))
    later.assign(session_id=later["session_id"] + "-later").to_parquet(tmp_path / "later.parquet")
    ingest_file(workspace, tmp_path / "later.parquet")
    stale = runner.invoke(_app(), args)
    assert stale.exit_code == 0, stale.output
    assert f"churn@v1 was trained on data to {events['ts'].max():%Y-%m-%d}; {len(later):,} newer events since" in stale.output
    assert latest_version(workspace, "churn") == "v2"


def test_an_answer_from_a_model_older_than_the_newest_events_says_so_in_one_line(workspace: Workspace) -> None:
    from test_agent import call, make_agent
    from test_agent_support import tiny_context

    from shopsight.behavior.workspace import write_json_atomic

    ctx = tiny_context(workspace)
    card = workspace.models_dir / "churn" / "v1" / "card.json"
    question, reply = "why is u00003 likely to churn?", "u00003 will likely churn: 88.1% (0.881), mostly because of the days since their last event."
    last = ctx.get_events()["ts"].max()
    write_json_atomic(card, {"data_cutoff": last.isoformat()})
    fresh, _ = make_agent(ctx, [call("predict_churn", {"user_id": "u00003"}), reply])
    assert "trained on data to" not in fresh.ask(question).answer
    cutoff = ctx.get_events()["ts"].sort_values().iloc[-3]  # two events came after the model's data
    write_json_atomic(card, {"data_cutoff": cutoff.isoformat()})
    stale, _ = make_agent(ctx, [call("predict_churn", {"user_id": "u00003"}), reply])
    answer = stale.ask(question).answer
    assert answer.splitlines()[-1] == f"churn@v1 was trained on data to {cutoff.day} {cutoff:%b %Y}; 2 newer events since."
    assert answer.startswith(reply)


def test_the_index_embeds_only_the_sessions_a_new_batch_adds_or_extends(tmp_path: Path, workspace: Workspace) -> None:
    from test_index import RecordingEmbedder

    from shopsight.index.store import SessionIndex

    ingest_file(workspace, _csv(tmp_path, "day1.csv", DAY1))
    recorder = RecordingEmbedder()
    index = SessionIndex(workspace, embedder=recorder)  # type: ignore[arg-type]
    assert index.build().embedded == 2  # u1-s1, u2-web-1
    ingest_file(workspace, _csv(tmp_path, "day2.csv", DAY2))
    texts_before = len(recorder.texts)
    stats = index.build()
    # u1-s1 grew by day 2's 09:30 view (one session across two batches: embedded once more), u1-s2 and
    # u3-s1 are new, u2-web-1 is unchanged.
    assert (stats.embedded, stats.unchanged, stats.sessions) == (3, 1, 4)
    assert len(recorder.texts) - texts_before == 3
    assert sorted(h.session_id for h in index.user_history("u1")) == ["u1-s1", "u1-s2"]
    # Once: a build with no new batch embeds nothing, and one that adds an unrelated user embeds only that user's session.
    assert (index.build().embedded, len(recorder.texts)) == (0, texts_before + 3)
    ingest_file(workspace, _csv(tmp_path, "day3.csv", ["u9,2026-03-06T10:00:00Z,view,i1,Audio,1,1,,"]))
    assert (index.build().embedded, len(recorder.texts)) == (1, texts_before + 4)


# --- bounded memory: the chunked pipeline gives what reading whole gives --------------------------


def test_an_ingest_in_chunks_stores_what_an_ingest_read_whole_stores(tmp_path: Path) -> None:
    # u1's rows run across chunk boundaries (sessionized in one piece), a full repeat and an identity
    # repeat (same event, another price) sit in later chunks than their originals, and day 2 continues
    # day 1's stored sessions.
    rows = [*DAY1, *DAY2, "u1,2026-03-04T09:12:00Z,view,i1,Audio,118.00,1,,",
            "u1,2026-03-04T09:12:00Z,view,i1,Audio,1.00,1,,", "u4,2026-03-05T11:00:00Z,view,i9,Toys,5,1,u4-app-1,"]
    day1, path = _csv(tmp_path, "day1.csv", DAY1), _csv(tmp_path, "all.csv", rows)
    results = {}
    for chunk_rows in (2, 3, 1000):
        ws = Workspace(tmp_path / f"ws{chunk_rows}")
        ingest_file(ws, day1, chunk_rows=chunk_rows)
        _, report = ingest_file(ws, path, chunk_rows=chunk_rows)
        results[chunk_rows] = (ws.load_events(), report.to_dict() | {"batch": None, "source": None}, ws.read_manifest()["summary"])
    for chunk_rows in (2, 3):
        pd.testing.assert_frame_equal(results[chunk_rows][0], results[1000][0])
        assert results[chunk_rows][1:] == results[1000][1:]
    events, report, _ = results[1000]
    assert (report["rows_read"], report["rows_kept"], report["duplicates"], report["already_stored"], report["rows_rejected"]) == (12, 4, 2, 5, 1)  # repeats: day 2's first row and the 09:12 view
    assert len(events) == 8 and not events.duplicated(["user_id", "ts", "event", "item_id"]).any()
    assert events.loc[(events["user_id"] == "u1") & (events["ts"] == pd.Timestamp("2026-03-04T09:12:00Z")), "price"].tolist() == [118.0]


def test_strict_refuses_a_row_repeating_one_of_an_earlier_chunk(tmp_path: Path, workspace: Workspace) -> None:
    path = _csv(tmp_path, "day1.csv", [*DAY1, DAY1[0]])
    with pytest.raises(EventDataError, match="day1.csv: a row repeats an earlier one"):
        ingest_file(workspace, path, strict=True, chunk_rows=2)
    assert not workspace.exists() and not (workspace.root / ".staging").exists()


# Kills an ingest of a file read in 2-row chunks in the middle of its new steps: while staging its
# second chunk (before the lock), or while finding stored events under the lock.
KILLED_MIDWAY = """
import os, signal, sys
import shopsight.behavior.batches as batches
from shopsight.behavior.ingest import ingest_file
from shopsight.behavior.workspace import Workspace

root, path, where = sys.argv[1:4]
if where == "staging":
    real, calls = batches.pq.write_table, [0]
    def write_table(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    batches.pq.write_table = write_table
else:
    def drop_stored(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    batches._drop_stored = drop_stored
ingest_file(Workspace.at(root), path, chunk_rows=2)
"""


@pytest.mark.parametrize("where", ["staging", "dedupe"])
def test_an_ingest_killed_while_staging_or_deduplicating_leaves_the_workspace_as_before(tmp_path: Path, where: str) -> None:
    day1, day2 = _csv(tmp_path, "day1.csv", DAY1), _csv(tmp_path, "day2.csv", DAY2)
    ws = Workspace(tmp_path / "ws")
    ingest_file(ws, day1)
    before, manifest = ws.load_events(), ws.read_manifest()
    killed = _run(["-c", KILLED_MIDWAY, str(ws.root), str(day2), where])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pd.testing.assert_frame_equal(ws.load_events(), before)
    assert ws.read_manifest() == manifest
    assert any(name.startswith(".staging/") for name in _files(ws))  # its staged chunks are still there
    with ws.writer("test", timeout=5):  # the lock died with it; the next writer clears what it left
        pass
    assert _files(ws) == ["events/batch-000001.parquet", "manifest.json"]
    ingest_file(ws, day2)
    assert len(ws.load_events()) == 7


def test_two_ingests_of_the_same_file_at_once_store_it_once(tmp_path: Path) -> None:
    rows = [f"u{u},2026-03-0{1 + d}T{h:02d}:10:00Z,view,i{h},Audio,1,1,," for u in range(50) for d in range(4) for h in range(24)]
    path = _csv(tmp_path, "same.csv", rows)
    ws = Workspace(tmp_path / "ws")
    with ws.writer("test"):  # held until both have staged the file: then both publish after reading it, for sure
        procs = [
            subprocess.Popen([sys.executable, "cli.py", "ingest", str(path), "--workspace", str(ws.root), "--json"], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        while len(list((ws.root / ".staging").glob("*/part-*.parquet"))) < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the ingests did not both stage"
            time.sleep(0.02)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # The second to publish found the first's rows stored, though it had read them before the first published.
    reports = sorted((json.loads(out)["report"] for out, _ in outs), key=lambda r: r["batch"])
    assert [(r["rows_kept"], r["already_stored"]) for r in reports] == [(len(rows), 0), (0, len(rows))]
    events = ws.load_events()
    assert len(events) == len(rows) and not events.duplicated().any()
    assert not (ws.root / ".staging").exists()


def test_more_events_of_the_same_data_set_keep_its_ground_truth_and_item_names(tmp_path: Path) -> None:
    from shopsight.behavior.demo import build_demo_workspace

    ws = Workspace(tmp_path / "demo")
    build_demo_workspace(ws, users=60, days=20, seed=3, progress=False)
    labels, catalogue = ws.label_names(), pd.read_parquet(ws.catalogue_path)
    assert labels and len(catalogue)
    # a day of canonical rows appended (a daily export, `shopsight watch`) is more of the demo
    _, report = ingest_file(ws, _csv(tmp_path, "more.csv", DAY1))
    assert report.rows_kept == 4
    assert ws.read_manifest()["dataset"] == "demo"
    assert ws.label_names() == labels and pd.read_parquet(ws.catalogue_path).equals(catalogue)
    # --replace starts another data set: the demo's truth and item names would be wrong for it
    ingest_file(ws, _csv(tmp_path, "other.csv", DAY2), replace=True)
    assert ws.read_manifest()["dataset"] == "canonical"
    assert ws.label_names() == [] and not ws.catalogue_path.exists()


def test_a_batch_deduplicated_in_passes_by_user_gives_what_one_pass_gives(tmp_path: Path, monkeypatch) -> None:
    """Past DEDUPE_ROWS_PER_PASS rows the dedupe runs per hash slice of the user id: the same rows, counts and sessions."""
    import shopsight.behavior.batches as batches

    # repeats within the file (a full repeat; an identity repeat with another price) and across the two ingests
    rows = [*DAY1, *DAY2, DAY1[0], DAY2[1].replace(",1,", ",2,", 1), "u9,2026-03-05T10:00:00Z,view,i2,Audio,5.00,1,,"]
    path = _csv(tmp_path, "all.csv", rows)
    results = {}
    for name, per_pass in (("one", 10**9), ("passes", 2)):
        monkeypatch.setattr(batches, "DEDUPE_ROWS_PER_PASS", per_pass)
        ws = Workspace(tmp_path / name)
        _, first = ingest_file(ws, _csv(tmp_path, f"day1-{name}.csv", DAY1))
        _, second = ingest_file(ws, path)
        results[name] = (ws.load_events(), [(r.rows_read, r.rows_kept, r.duplicates, r.already_stored) for r in (first, second)])
    one, passes = results["one"], results["passes"]
    pd.testing.assert_frame_equal(passes[0], one[0])
    assert passes[1] == one[1]
    assert one[1][1][2] >= 1 and one[1][1][3] >= len(DAY1) - 1  # the file's own repeats and day 1's rows were found
