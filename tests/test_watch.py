"""`shopsight watch`: new events appended through the lifecycle ingest, every new order decided once (also
across SIGKILL and restart), malformed lines rejected with their cause while the stream goes on."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


def test_each_order_is_decided_as_score_order_decides_it_as_of_its_own_instant(tmp_path):
    """The decision path (buyer's in-memory history, incremental linked-accounts index) against a direct
    ``score_order`` over every stored event: same probability, same rules, same decision."""
    from shopsight.behavior.models import load_model
    from shopsight.behavior.models.decision import load_policy

    ws, base, tail = _stream_setup(tmp_path, days=4.0)
    stream = tmp_path / "events.csv"
    cuts = [len(tail) * k // 4 for k in range(5)]
    tail.iloc[: cuts[1]].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False)
    watcher.poll(flush=False)  # lands and decides; stores nothing yet
    for k in (1, 2, 3):  # each poll stores: the base (from before batches) becomes batch 0, then one stream batch each
        tail.iloc[cuts[k]: cuts[k + 1]].to_csv(stream, index=False, header=False, mode="a")
        watcher.poll()  # decided from the state after earlier stores: nothing in it twice
    d = _assert_exactly_once(ws, base, tail).dropna(subset=["order_id"]).set_index("order_id")
    model = load_model(ws, "risk", "v1")
    policy = load_policy(ws, model.card_)
    events = ws.load_events()
    assert len(d) >= 20
    for oid, row in d.iterrows():
        want = model.score_order(events, oid)
        decision = policy.decide(want["probability"], want["rules"])
        assert abs(row["score"] - want["probability"]) <= 1e-4, oid
        assert row["decision"] == decision.decision, oid
        assert pd.read_json(io.StringIO(row["rules"])).to_dict("records") == [
            {"name": r["name"], "detail": r["detail"], "evidence": r["evidence"][:5]} for r in want["rules"] if r["fired"]], oid
        lines = events.loc[events["order_id"] == oid, "ts"]
        assert row["order_ts"] == lines.min() and row["event_ts"] == lines.max(), oid  # judged as of its latest line


def test_the_watcher_makes_the_rows_the_ingest_stores(tmp_path):
    """Session ids made poll by poll from memory equal those the ingest made when it stored the same lines."""
    ws, base, tail = _stream_setup(tmp_path, days=2.0)
    tail = tail.assign(session_id=pd.NA)  # no source sessions: every id is made, continuing the stored ones
    stream = tmp_path / "events.csv"
    cuts = [len(tail) * k // 5 for k in range(6)]
    tail.iloc[: cuts[1]].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False)
    watcher.poll(flush=False)
    for k in range(1, 5):
        tail.iloc[cuts[k]: cuts[k + 1]].to_csv(stream, index=False, header=False, mode="a")
        watcher.poll(flush=False)
    users = sorted(set(tail["user_id"]))
    mine = watcher.histories.of_users(users)
    watcher.flush()  # one batch: the ingest dedupes and sessionizes all five polls' lines at once
    stored = ws.load_events()
    stored = stored[stored["user_id"].isin(users)]
    key = ["user_id", "ts", "event", "item_id", "order_id"]
    got = mine.sort_values(key)[key + ["session_id"]].astype("string").reset_index(drop=True)
    want = stored.sort_values(key)[key + ["session_id"]].astype("string").reset_index(drop=True)
    assert len(got) == len(want) and got.equals(want)


def test_the_identity_index_gives_the_linked_accounts_rule_of_the_table_as_of_any_instant():
    from shopsight.behavior.models.rules import IdentityIndex, RuleThresholds, _linked_accounts_for, evaluate_rules
    from risk_workspace import risk_shop

    events = risk_shop().events
    fired = evaluate_rules(events)["linked_accounts"].users
    users = list(fired.index[fired["fired"]][:15]) + list(fired.index[~fired["fired"]][:5])
    assert fired["fired"].sum() >= 3 and len(users) >= 8
    stamps = sorted(events["ts"].unique())
    for asof in (stamps[len(stamps) // 3], stamps[2 * len(stamps) // 3], stamps[-1]):
        upto = events[events["ts"] <= asof]
        index = IdentityIndex()
        index.add(events.sample(frac=1.0, random_state=0))  # any order, events after asof included: "as of" filters them
        for u in users:
            mine = upto[upto["user_id"] == u]
            if mine.empty:
                continue
            want = _linked_accounts_for(upto, mine, RuleThresholds()).users
            got = index.linked_accounts(mine, asof=pd.Timestamp(asof)).users
            assert got.to_dict("records") == want.to_dict("records"), (u, asof)


def test_one_pass_of_buyers_each_as_of_their_own_instant_gives_each_one_the_rule_of_the_table_then():
    """Several buyers in one call (a poll's orders), each as of their own order time: ring members who share an
    identifier but had different co-holders by their instants are still judged each by their own instant."""
    from shopsight.behavior.models.rules import IdentityIndex, RuleThresholds, _linked_accounts_for, evaluate_rules
    from risk_workspace import risk_shop

    events = risk_shop().events
    fired = evaluate_rules(events)["linked_accounts"].users
    users = list(fired.index[fired["fired"]][:12]) + list(fired.index[~fired["fired"]][:6])
    rng = np.random.default_rng(0)
    index = IdentityIndex()
    index.add(events)
    own_times = {u: np.sort(events.loc[events["user_id"] == u, "ts"].unique()) for u in users}
    for _ in range(4):  # each buyer as of one of their own events: ring members part-way through the ring's activity
        asof = {u: pd.Timestamp(t[int(rng.integers(len(t)))]) for u, t in own_times.items()}
        parts = [events[(events["user_id"] == u) & (events["ts"] <= asof[u])] for u in users]
        mine = pd.concat([p for p in parts if len(p)], ignore_index=True)
        got = index.linked_accounts(mine, asof={u: asof[u] for u in mine["user_id"].unique()}).users
        for u in mine["user_id"].unique():
            upto = events[events["ts"] <= asof[u]]
            want = _linked_accounts_for(upto, upto[upto["user_id"] == u], RuleThresholds()).users
            assert got.loc[[u]].to_dict("records") == want.to_dict("records"), (u, asof[u])
        assert got.index.is_monotonic_increasing and got["fired"].any() and not got["fired"].all()


def test_the_identity_index_follows_an_identifier_from_specific_to_common_as_events_land():
    """Events added in steps, the rule asked between them: an IP held by 3 users, then by 12 to 40 of 200 (common),
    judged as of instants before and after it became common, each time as the table up to then judges it."""
    from shopsight.behavior.models.rules import IdentityIndex, RuleThresholds, _linked_accounts_for

    t0 = pd.Timestamp("2026-03-01", tz="UTC")
    rows = []
    for i in range(200):  # 200 users, each one session on their own IP and device
        rows.append({"user_id": f"u{i:03d}", "session_id": f"s{i:03d}", "ts": t0 + pd.Timedelta(minutes=i), "ip": f"10.0.0.{i}",
                     "device": f"d{i}"})
    for k, i in enumerate(range(0, 40)):  # then 40 of them, one by one, on the shared NAT 10.9.9.9
        rows.append({"user_id": f"u{i:03d}", "session_id": f"n{i:03d}", "ts": t0 + pd.Timedelta(hours=5, minutes=k), "ip": "10.9.9.9",
                     "device": f"d{i}"})
    events = pd.DataFrame(rows).assign(event="view").astype({"user_id": "string", "session_id": "string", "ip": "string", "device": "string"})
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    index = IdentityIndex()
    cuts = [200, 203, 205, 212, 225, 240]  # the NAT's holders: 0, 3, 5, 12, 25, 40
    start = 0
    verdicts = []
    for cut in cuts:
        index.add(events.iloc[start:cut])
        start = cut
        upto = events.iloc[:cut]
        asof = upto["ts"].max()
        for u in ("u000", "u001", "u150"):
            mine = upto[upto["user_id"] == u]
            want = _linked_accounts_for(upto, mine, RuleThresholds()).users
            got = index.linked_accounts(mine, asof=asof).users
            assert got.to_dict("records") == want.to_dict("records"), (u, cut)
            if u == "u000":
                verdicts.append(int(got["value"].iloc[0]))
        if cut < 205:
            continue
        # and as of an earlier instant (2 holders then), with the later holders already added
        early = events.iloc[:202]
        mine = early[early["user_id"] == "u000"]
        assert index.linked_accounts(mine, asof=early["ts"].max()).users.to_dict("records") == \
            _linked_accounts_for(early, mine, RuleThresholds()).users.to_dict("records")
    # u000's other accounts on the NAT: 2 and 4 while specific; 0 from 12 holders on (more than linked_min_common's 10 and
    # than 2 % of 200 users: common)
    assert verdicts == [0, 2, 4, 0, 0, 0]


def test_the_manifest_gains_one_batch_per_store_not_per_poll(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=1.0)
    stream = tmp_path / "events.csv"
    tail.iloc[:10].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False, flush_every=3600)

    def streamed() -> list[dict]:
        return [b for b in ws.batches() if str(b["source"]).startswith("watch:")]

    for k in range(10, len(tail), max(1, len(tail) // 8)):  # eight polls, each with new lines
        watcher.poll(flush=False)
        tail.iloc[k:k + max(1, len(tail) // 8)].to_csv(stream, index=False, header=False, mode="a")
    watcher.poll(flush=False)
    assert not streamed() and len(load_decisions(ws).dropna(subset=["order_id"])) >= 1  # decided (journal), not stored yet
    watcher.flush()
    assert [b["source"].rsplit("@", 1)[1] for b in streamed()] == [f"0-{stream.stat().st_size}"]  # one batch, the whole range
    _assert_exactly_once(ws, base, tail)


def test_the_store_process_stores_while_the_watcher_decides(tmp_path):
    import shopsight.behavior.watch as W

    ws, base, tail = _stream_setup(tmp_path, days=2.0)
    stream = tmp_path / "events.csv"
    half = len(tail) // 2
    tail.iloc[:half].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False, flush_every=0.0)
    watcher._worker = W._StoreWorker()
    try:
        watcher.poll(flush=False)  # decided here, handed to the store process
        assert watcher._worker.busy
        tail.iloc[half:].to_csv(stream, index=False, header=False, mode="a")
        watcher.poll(flush=False)
        watcher.flush(wait=True)  # waits for the process's store, then stores the rest
        assert not watcher._worker.busy
    finally:
        watcher._worker.close()
    _assert_exactly_once(ws, base, tail)
    assert len([b for b in ws.batches() if str(b["source"]).startswith("watch:")]) >= 2


def test_a_failed_background_store_is_raised_by_the_next_poll(tmp_path):
    import shopsight.behavior.watch as W

    ws, base, tail = _stream_setup(tmp_path, days=1.0)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)
    (ws.root / "decisions").write_text("not a folder")  # the store cannot write the decisions
    watcher = StreamWatcher(ws, stream, score_users=False, flush_every=0.0)
    watcher._worker = W._StoreWorker()
    try:
        watcher.poll(flush=False)
        with pytest.raises(WatchError, match="storing the watched events failed"):
            watcher._worker.result(wait=True)
    finally:
        watcher._worker.close()


def test_events_another_writer_stores_between_two_stores_join_the_state(tmp_path):
    """`shopsight ingest` of other users' events while the watcher runs: the next decisions see them."""
    from shopsight.behavior.ingest import ingest_file

    ws, base, tail = _stream_setup(tmp_path, days=4.0)
    buyers = set(tail.loc[tail["event"] == "purchase", "user_id"])
    side = tail[~tail["user_id"].isin(buyers)]  # never in the stream: another source
    stream_part = tail[tail["user_id"].isin(buyers)]
    stream = tmp_path / "events.csv"
    half = len(stream_part) // 2
    stream_part.iloc[:half].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False)
    watcher.poll()
    side.to_csv(tmp_path / "side.csv", index=False)
    ingest_file(ws, tmp_path / "side.csv", update_summary=False)
    stream_part.iloc[half:].to_csv(stream, index=False, header=False, mode="a")
    watcher.poll()  # stores, and takes in the other writer's batch
    _assert_exactly_once(ws, base, tail)
    stored = ws.load_events()
    others = sorted(set(side["user_id"]))
    assert len(watcher.histories.of_users(others)) == stored["user_id"].isin(others).sum()  # theirs as stored: once each


def test_decisions_journaled_before_a_crash_are_alerted_again_at_restart(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=2.0)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)

    def crash(rows):
        raise RuntimeError("killed before the alerts went out")

    with pytest.raises(RuntimeError, match="killed before"):
        StreamWatcher(ws, stream, on_decisions=crash, score_users=False).poll()
    sent: list[dict] = []
    StreamWatcher(ws, stream, on_decisions=sent.extend, score_users=False).poll()
    d = _assert_exactly_once(ws, base, tail)
    assert {r["order_id"] for r in sent} == set(d["order_id"].dropna())  # every decision alerted once now
    assert not pd.Series([r["order_id"] for r in sent]).duplicated().any()


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
owner, target = {{"journal": (W.DecisionJournal, "append"), "ingest": (W, "ingest_file"), "decisions": (W, "write_decisions"),
                  "checkpoint": (W, "write_checkpoint")}}[where]
original = getattr(owner, target)
def hooked(*args, **kwargs):
    out = original(*args, **kwargs)
    if where == "journal" and not any("row" in r for r in args[1]):
        return out  # an alert marker, not decisions
    calls["n"] += 1
    if calls["n"] == nth:  # journaled (journal), stored (ingest), folded (decisions), checkpointed (checkpoint): nothing after
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, target, hooked)
# stores in this process, after each poll: the hooks see every step
W.StreamWatcher(Workspace.at(sys.argv[3]), sys.argv[4], flush_every=0.0, store_process=False).run(max_polls=20, poll_seconds=0.01)
"""


def _run_killed(ws: Workspace, stream: Path, where: str, nth: int, script: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), where, str(nth), str(ws.root), str(stream)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc.returncode


def _journaled_orders(ws: Workspace) -> list[str]:
    from shopsight.behavior.decisions import journal_records

    return [str(r["row"]["order_id"]) for _, r in journal_records(ws) if r["row"].get("order_id") is not None]


@pytest.mark.slow
def test_sigkill_at_each_step_journal_store_fold_checkpoint_then_restart_decides_every_order_once(tmp_path):
    ws, base, tail = _stream_setup(tmp_path, days=4.0)
    folder = tmp_path / "incoming"
    folder.mkdir()
    parts = [tail.iloc[i::6] for i in range(6)]  # six files, each its own batch
    for i, part in enumerate(parts):
        part.sort_values("ts").to_csv(folder / f"part{i}.csv", index=False)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(root=str(ROOT)))
    # killed once the first decisions are journaled: durable there, nothing stored yet
    _run_killed(ws, folder, "journal", 1, script)
    first = _journaled_orders(ws)
    assert first and not decided_batches(ws) and not [b for b in ws.batches() if str(b["source"]).startswith("watch:")]
    assert set(first) <= set(load_decisions(ws)["order_id"].dropna())  # the audit trail reads the journal too
    # restarted: those orders are not decided again; killed after the 2nd batch is stored, before its decisions are folded
    _run_killed(ws, folder, "ingest", 2, script)
    assert len(decided_batches(ws)) == 1
    journaled = _journaled_orders(ws)
    assert not pd.Series(journaled).duplicated().any() and set(first) <= set(journaled)
    # restarted: the stored batch is folded from the journal first; killed after the next batch's fold, before the checkpoint
    _run_killed(ws, folder, "decisions", 2, script)
    assert len(decided_batches(ws)) == 3
    # restarted: killed after a checkpoint, before the folded journal segments are deleted
    _run_killed(ws, folder, "checkpoint", 1, script)
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
    assert not _journaled_orders(ws)  # every journal segment folded and deleted
    streamed = {int(b["id"]) for b in ws.batches() if b.get("file") and str(b["source"]).startswith("watch:")}
    assert streamed == decided_batches(ws) and len(streamed) >= 6  # every stored batch of the stream decided
    assert set(d["batch"].dropna()) <= decided_batches(ws)


def test_a_line_cut_short_in_the_journal_never_counted(tmp_path):
    from shopsight.behavior.decisions import DecisionJournal

    j = DecisionJournal(tmp_path, "k")
    j.append([{"kind": "order", "file": "f", "start": 0, "row": {"order_id": "o1"}}])
    path = j.segments()[0][1]
    j.close()
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"order","row":{"order_id":"o2"')  # a kill in the middle of the write
    again = DecisionJournal(tmp_path, "k")
    assert [r["row"]["order_id"] for _, r in again.load()] == ["o1"]
    assert path.read_bytes().endswith(b"}\n")  # cut back to the last whole line, so the next append starts clean


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


def test_the_state_grown_by_polls_is_frozen_out_of_the_collectors_full_passes(tmp_path, monkeypatch):
    """Each poll's growth of the state (identity entries, history parts) leaves the collector's oldest generation,
    so full collections do not walk an ever larger state (a pause that grew to 330 ms within 25 s of replay)."""
    import gc

    import shopsight.behavior.watch as W

    ws, base, tail = _stream_setup(tmp_path, days=1.0)
    stream = tmp_path / "events.csv"
    tail.iloc[:10].to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, score_users=False, flush_every=3600)
    monkeypatch.setattr(W, "FREEZE_EVERY_S", 0.0)
    try:
        watcher.poll(flush=False)
        frozen = gc.get_freeze_count()
        tail.iloc[10:].to_csv(stream, index=False, header=False, mode="a")
        watcher.poll(flush=False)
        assert gc.get_freeze_count() > frozen  # the rows landed in the second poll, and what they grew, are frozen
        assert not any(isinstance(o, W.UserHistories) for o in gc.get_objects(2))  # the state itself is not in gen 2
        watcher.flush()
    finally:
        gc.unfreeze()
    _assert_exactly_once(ws, base, tail)


def test_a_summary_over_several_polls_adds_their_counts_and_keeps_every_decision():
    from shopsight.behavior.watch import PollReport

    total = PollReport()
    assert total.empty()
    total.merge(PollReport(batches=[3], events_added=10, decisions=[{"decision": "allow"}, {"decision": "block"}]))
    total.merge(PollReport(rejected_lines=2, already_stored=4, decisions=[{"decision": "review"}], recovered_batches=[2]))
    assert not total.empty()
    assert (total.batches, total.events_added, total.already_stored, total.rejected_lines) == ([3], 10, 4, 2)
    assert total.recovered_batches == [2] and total.counts() == {"allow": 1, "review": 1, "block": 1}
    assert not PollReport(skipped_ranges=1).empty() and not PollReport(rejected_rows=1).empty()


def test_in_the_run_loop_users_wait_for_slack_or_credit_while_orders_are_decided_at_once(tmp_path):
    """A loop that is behind (no slack, its users' credit spent) decides the poll's orders and no user; slack pays for users."""
    import time

    import shopsight.behavior.watch as W

    ws, base, tail = _stream_setup(tmp_path)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, users_every=0.0, store_process=False)
    watcher.poll_seconds = 0.0
    watcher._users_credit, watcher._credit_at = -10.0, time.monotonic()
    report = watcher.poll(flush=False)
    assert [d for d in report.decisions if d["order_id"]]
    assert not [d for d in report.decisions if not d["order_id"]]
    pending = len(watcher._pending_users)
    assert pending > W.USERS_PER_PASS
    watcher.poll_seconds = 10.0  # a poll with slack: users are judged, up to the budget, the rest stay pending
    watcher.poll(flush=False)
    assert 0 < len(watcher._pending_users) < pending
    watcher.decide_pending_users()
    assert not watcher._pending_users


def test_ctrl_c_stops_after_storing_what_landed_and_the_store_process_ignores_it(tmp_path):
    """Ctrl-C reaches the whole process group: the store child goes on (no traceback, no store cut short), and the
    watcher says it is stopping, decides the users still pending and stores what landed before it leaves."""
    import os
    import signal
    import time

    from shopsight.behavior.watch import _StoreWorker

    worker = _StoreWorker()
    try:
        time.sleep(0.2)  # its handler is set first thing in the child
        os.kill(worker._proc.pid, signal.SIGINT)
        time.sleep(0.3)
        assert worker._proc.is_alive()
    finally:
        worker.close()
    assert not worker._proc.is_alive() and worker._proc.exitcode == 0  # ended by the closed pipe

    ws, base, tail = _stream_setup(tmp_path)
    stream = tmp_path / "events.csv"
    tail.to_csv(stream, index=False)
    watcher = StreamWatcher(ws, stream, users_every=0.0, store_process=False)
    said = []

    def interrupt(report):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watcher.run(poll_seconds=0.0, on_poll=interrupt, on_stopping=said.append)
    assert len(said) == 1
    assert not watcher._pending_users
    _assert_exactly_once(ws, base, tail)


@pytest.mark.parametrize("naive", [False, True])
def test_a_polls_rows_are_read_validated_and_protected_as_a_large_files_are(tmp_path, monkeypatch, naive):
    """The small-table paths a poll takes (text cleaned, values protected, identities indexed row by row in Python)
    give exactly what the vectorised paths of a large file give: the same rows, reports, notes and index."""
    import shopsight.behavior.events as events_mod
    import shopsight.behavior.models.rules as rules_mod
    import shopsight.behavior.privacy as privacy_mod
    from shopsight.behavior.ingest import read_protected
    from shopsight.behavior.models.rules import IdentityIndex

    rng = np.random.default_rng(7)
    t0 = pd.Timestamp("2026-03-01 10:00", tz="UTC")
    rows = []
    for i in range(150):
        user = ["alice@example.com", " u7 ", "u8", "+44 20 7946 0958", "", "u9"][i % 6]
        stamp = (t0 + pd.Timedelta(seconds=int(rng.integers(0, 7200)))).strftime("%Y-%m-%dT%H:%M:%S")
        stamp += "" if naive and i % 5 == 0 else ["Z", "+02:00", " UTC"][i % 3]
        rows.append({
            "user_id": user, "ts": stamp, "event": [" View", "purchase", "cart", "bogus"][i % 4],
            "item_id": ["i1", " i2", "", "12.0"][i % 4], "category": ["shoes", "call +1 415 555 0100", "", " x "][i % 4],
            "price": ["9.5", "1,200", "", "-3", "abc"][i % 5], "quantity": ["1", "2", "", "1.5"][i % 4],
            "session_id": ["s1", "bob@example.org-s2", "", "s3"][i % 4], "device": ["ios", "", "Pixel of carol@example.net"][i % 3],
            "country": ["US", "", "DE"][i % 3], "payment": ["card 4111 1111 1111 1111", "paypal", ""][i % 3],
            "order_id": [f"o{i}", "", f"o{i - 1}"][i % 3], "ip": ["203.0.113.7", "", "2001:db8::1", "ip-abc"][i % 4],
            "text": ["great", "mail me at dave@example.com", "x" * 3000, ""][i % 4],
        })
    rows.append(dict(rows[0]))  # a duplicate line
    path = tmp_path / "chunk.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    ws = Workspace(tmp_path / "ws")

    small_rows, small_rep = read_protected(ws, path)
    small_index = IdentityIndex()
    for k in range(0, len(small_rows), 37):
        small_index.add(small_rows.iloc[k:k + 37])
    for mod, name in ((events_mod, "SMALL_TEXT_ROWS"), (privacy_mod, "SMALL_COLUMN_ROWS"), (rules_mod, "SMALL_ADD_ROWS")):
        monkeypatch.setattr(mod, name, -1)
    large_rows, large_rep = read_protected(ws, path)
    large_index = IdentityIndex()
    large_index.add(large_rows)

    assert len(small_rows) > 30 and small_rep.rows_rejected > 10 and small_rep.duplicates == 1
    pd.testing.assert_frame_equal(small_rows, large_rows)
    assert small_rep.notes == large_rep.notes and any("pseudonym" in n for n in small_rep.notes)
    assert small_rep.naive_timestamps_as == large_rep.naive_timestamps_as
    pd.testing.assert_frame_equal(small_rep.rejected, large_rep.rejected)
    assert small_index.users_of == large_index.users_of and small_index.first_seen == large_index.first_seen
    assert not small_rows["user_id"].str.contains("@").any() and small_rows["ip"].dropna().str.startswith("ip-").all()


def test_user_histories_give_each_users_stored_then_landed_rows_however_often_they_are_read():
    from shopsight.behavior.watch import UserHistories

    rng = np.random.default_rng(11)
    t0 = pd.Timestamp("2026-03-01", tz="UTC")

    def rows(n, start):
        return pd.DataFrame({"user_id": pd.array([f"u{int(k)}" for k in rng.integers(0, 12, n)], dtype="string"),
                             "ts": t0 + pd.to_timedelta(start + np.arange(n), unit="s"), "n": start + np.arange(n)})

    stored = rows(300, 0).sample(frac=1.0, random_state=1).reset_index(drop=True)  # stored in any order
    hist = UserHistories(stored)
    landed = [stored]
    for step in range(12):
        part = rows(int(rng.integers(0, 30)), 1000 + 100 * step)
        hist.add(part)
        landed.append(part)
        for _ in range(2):  # read twice: the second read comes from what the first kept
            users = [f"u{int(k)}" for k in rng.choice(14, size=int(rng.integers(1, 6)), replace=False)]  # u12, u13: unknown
            got = hist.of_users(users)
            everything = pd.concat(landed, ignore_index=True)
            want = [everything[everything["user_id"] == u] for u in users]
            want = pd.concat([w for w in want if len(w)], ignore_index=True) if any(len(w) for w in want) else None
            if want is None:
                assert got is None
            else:
                assert got["n"].tolist() == want["n"].tolist(), (step, users)
