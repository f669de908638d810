"""`shopsight watch`: new events appended through the lifecycle ingest, every new order decided once (also
across SIGKILL and restart), malformed lines rejected with their cause while the stream goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shopsight.behavior.decisions import decided_batches, load_decisions
from shopsight.behavior.batches import IDENTITY
from shopsight.behavior.watch import StreamWatcher, WatchError, split_lines
from shopsight.behavior.workspace import Workspace
from risk_workspace import trained_risk_workspace

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["user_id", "ts", "event", "item_id", "category", "price", "quantity", "session_id", "device", "country",
           "payment", "order_id", "ip"]


def _stream_setup(tmp_path: Path, days: float = 3.0):
    """A trained workspace whose last ``days`` of events are taken out, to arrive as a stream."""
    ws = trained_risk_workspace(tmp_path / "ws")
    events = ws.load_events()
    cut = events["ts"].max() - pd.Timedelta(days=days)
    base = events[events["ts"] < cut]
    tail = events[events["ts"] >= cut].sort_values(["ts", "user_id"], kind="stable")[COLUMNS].reset_index(drop=True)
    ws.save_events(base)
    return ws, base, tail


def _orders(tail: pd.DataFrame) -> set[str]:
    return set(tail.loc[tail["event"] == "purchase", "order_id"].dropna().astype(str))


def _identities(events: pd.DataFrame) -> list[tuple]:
    """Each event's identity (user, time, event, item, session, order), sorted: equal lists are the same events."""
    frame = events[[c for c in IDENTITY if c in events]].copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("int64")
    for c in frame.columns.drop("ts"):
        frame[c] = frame[c].astype("string").fillna("")
    return sorted(frame.itertuples(index=False, name=None))


def _assert_exactly_once(ws: Workspace, base: pd.DataFrame, tail: pd.DataFrame) -> pd.DataFrame:
    """Every order of the stream decided once; every event of base and stream stored once."""
    d = load_decisions(ws)
    decided = d["order_id"].dropna().astype(str)
    assert not decided.duplicated().any(), f"decided twice: {sorted(decided[decided.duplicated()])[:5]}"
    assert set(decided) == _orders(tail)
    stored = ws.load_events()
    want = pd.concat([base[COLUMNS], tail], ignore_index=True)
    assert len(stored) == len(want)
    assert _identities(stored) == _identities(want)
    return d


def test_once_appends_the_stream_and_decides_every_new_order(tmp_path):
    from shopsight.cli import app

    ws, base, tail = _stream_setup(tmp_path)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)
    result = CliRunner().invoke(app, ["watch", str(stream), "--once", "--no-alerts", "--workspace", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "events added" in result.output
    d = _assert_exactly_once(ws, base, tail)
    assert set(d["decision"]) <= {"allow", "review", "block"}
    assert (d["model"] == "risk@v1").all() and d["source"].str.startswith("watch:").all()
    row = d.dropna(subset=["order_id"]).iloc[0]
    assert row["reasons"].startswith("[") and pd.notna(row["decided_at"]) and pd.notna(row["landed_at"])
    # a second run finds nothing new: no batch, no decision
    again = CliRunner().invoke(app, ["watch", str(stream), "--once", "--no-alerts", "--workspace", str(ws.root)])
    assert again.exit_code == 0 and len(load_decisions(ws)) == len(d)


def test_malformed_lines_are_rejected_with_their_cause_and_the_stream_goes_on(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=1.0)
    stream = tmp_path / "events.csv"
    first, rest = tail.iloc[: len(tail) // 2], tail.iloc[len(tail) // 2:]
    first.to_csv(stream, index=False)
    with open(stream, "ab") as fh:
        fh.write(b"u00001,2026-01-02T00:00:00Z,view\n")  # too few fields
        fh.write(b'u00001,"2026-01-02T00:00:00Z,view,i1,Books,1.0,1,s,mobile,US,card,,1.2.3.4\n')  # an open quote
        fh.write(b"u0\xff\xfe1,2026-01-02T00:00:00Z,view,i1,Books,1.0,1,s,mobile,US,card,,\n")  # not UTF-8
        fh.write(b"u00001,not-a-time,view,i1,Books,1.0,1,u00001-sX,mobile,US,card,,\n")  # a row, with a bad time
    rest.to_csv(stream, index=False, header=False, mode="a")
    watcher = StreamWatcher(ws, stream)
    report = watcher.poll()
    assert report.rejected_lines == 3 and report.rejected_rows == 1
    rejected = {p.name: p.read_text() for p in ws.rejected_dir.iterdir()}
    lines = next(v for k, v in rejected.items() if k.startswith("watch-"))
    assert "expected 13 fields as in the header, found 3" in lines and "not a CSV row" in lines and "not UTF-8" in lines
    n_first = len(first) + 1  # the header is line 1
    assert f",{n_first + 1}," in lines  # the first bad line is named by its line number
    batch_rejects = next(v for k, v in rejected.items() if k.startswith("batch-"))
    assert "ts" in batch_rejects and "not-a-time" in batch_rejects
    _assert_exactly_once(ws, base, tail)  # every good line, before and after the bad ones, is stored and decided


def test_a_folder_is_followed_file_by_file_and_csv_files_as_they_grow(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=2.0)
    folder = tmp_path / "incoming"
    folder.mkdir()
    a, b, c = tail.iloc[: len(tail) // 3], tail.iloc[len(tail) // 3: 2 * len(tail) // 3], tail.iloc[2 * len(tail) // 3:]
    a.to_csv(folder / "day1.csv", index=False)
    b.to_parquet(folder / "day2.parquet", index=False)
    watcher = StreamWatcher(ws, folder)
    first = watcher.poll()
    assert len(first.batches) == 2
    half = len(c) // 2
    c.iloc[:half].to_csv(folder / "day1.csv", index=False, header=False, mode="a")  # the CSV grows
    c.iloc[half:].to_csv(folder / "day3.csv", index=False)  # and a new file lands
    second = watcher.poll()
    assert len(second.batches) == 2
    _assert_exactly_once(ws, base, tail)


def test_an_order_whose_lines_straddle_two_polls_is_decided_once(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=2.0)
    lines = tail[tail["event"] == "purchase"].groupby("order_id").size()
    order = str(lines[lines > 1].index[0])
    at = tail.index[tail["order_id"] == order][0] + 1  # the cut falls after the order's first line
    stream = tmp_path / "events.csv"
    tail.iloc[:at].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream)
    watcher.poll()
    tail.iloc[at:].to_csv(stream, index=False, header=False, mode="a")
    watcher.poll()
    d = _assert_exactly_once(ws, base, tail)
    assert (d["order_id"] == order).sum() == 1


def test_nothing_to_watch_and_no_model_are_clear_errors(tmp_path, workspace):
    with pytest.raises(WatchError, match="nothing to watch"):
        StreamWatcher(workspace, tmp_path / "missing")
    (tmp_path / "e.csv").write_text(",".join(COLUMNS) + "\n")
    workspace.root.mkdir(parents=True)
    with pytest.raises(WatchError, match="train one with `shopsight train risk"):
        StreamWatcher(workspace, tmp_path / "e.csv").poll()


def test_split_lines_keeps_rows_as_wide_as_the_header():
    good, bad = split_lines(b'a,b,c\n1,2\n"x,y",2,3\n\n', "h1,h2,h3", first_line=2, source="f.csv")
    assert good == ["a,b,c", '"x,y",2,3']
    assert [(r["line"], r["reason"]) for r in bad] == [(3, "expected 3 fields as in the header, found 2")]


# --- SIGKILL and restart -------------------------------------------------------------------------

_KILLER = """
import os, signal, sys
sys.path[:0] = [{root!r}]
import shopsight.behavior.watch as W
from shopsight.behavior.workspace import Workspace
where, nth = sys.argv[1], int(sys.argv[2])
calls = {{"n": 0}}
target = {{"ingest": "ingest_file", "decisions": "write_decisions"}}[where]
original = getattr(W, target)
def hooked(*args, **kwargs):
    out = original(*args, **kwargs)
    calls["n"] += 1
    if calls["n"] == nth:  # the batch is visible (ingest) or decided (decisions); the checkpoint is not written yet
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(W, target, hooked)
W.StreamWatcher(Workspace.at(sys.argv[3]), sys.argv[4]).run(max_polls=20, poll_seconds=0.01)
"""


def _run_killed(ws: Workspace, stream: Path, where: str, nth: int, script: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), where, str(nth), str(ws.root), str(stream)], env=env,
                          capture_output=True, text=True, timeout=240)
    return proc.returncode


@pytest.mark.slow
def test_sigkill_between_ingest_decisions_and_checkpoint_then_restart_decides_every_order_once(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=4.0)
    folder = tmp_path / "incoming"
    folder.mkdir()
    parts = [tail.iloc[i::6] for i in range(6)]  # six files, each its own batch
    for i, part in enumerate(parts):
        part.sort_values("ts").to_csv(folder / f"part{i}.csv", index=False)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(root=str(ROOT)))
    # killed after the 2nd batch became visible, before its decisions
    assert _run_killed(ws, folder, "ingest", 2, script) == -signal.SIGKILL
    assert len(decided_batches(ws)) == 1
    # restarted: the undecided batch is decided first; killed after the next batch's decisions, before the checkpoint
    assert _run_killed(ws, folder, "decisions", 2, script) == -signal.SIGKILL
    assert len(decided_batches(ws)) == 3
    # restarted through the CLI, in the background, and killed at an arbitrary moment
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "watch", str(folder), "--poll", "0.05", "--no-alerts",
                             "--workspace", str(ws.root)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while len(decided_batches(ws)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # finally to the end
    finish = subprocess.run([sys.executable, str(ROOT / "cli.py"), "watch", str(folder), "--once", "--no-alerts",
                             "--workspace", str(ws.root)], env=env, capture_output=True, text=True, timeout=240)
    assert finish.returncode == 0, finish.stderr
    d = _assert_exactly_once(ws, base, tail)
    streamed = {int(b["id"]) for b in ws.batches() if b.get("file") and str(b["source"]).startswith("watch:")}
    assert streamed == decided_batches(ws) and len(streamed) >= 6  # every stored batch of the stream decided
    assert set(d["batch"]) <= decided_batches(ws)


def test_users_whose_behaviour_changed_are_decided_off_the_orders_path_once_per_change(tmp_path):
    ws, base, tail = _stream_setup(tmp_path)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, users_every=0.0)
    watcher.poll()
    d = load_decisions(ws)
    users = d[d["order_id"].isna()]
    assert len(users) >= 1 and (users["decision"] != "allow").all()  # only news: above allow
    assert users["reasons"].str.contains("bot velocity rule forces review").any()
    assert not users["user_id"].duplicated().any()
    watcher._pending_users.update(dict.fromkeys(users["user_id"]))  # judged again, nothing changed: nothing new written
    watcher.decide_pending_users()
    assert len(load_decisions(ws)) == len(d)
