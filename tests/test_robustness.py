"""Robustness findings of issue 16 (items 5-6): what breaks when the data, the disk or other processes misbehave.

Concurrent writers to one conversation, and the CLI's answers to a corrupted index, a read-only
workspace, broken model files, bad input paths and options: one `Error:` line that names what
is wrong and how to fix it, a non-zero exit, and never a traceback. Where a command answers or
lists per model (`ask`, `models`, `predict`), the same message appears in place and it exits 0.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from conversation_writer import append_one_turn
from fake_openai import ScriptedOpenAI
from test_index import make_events
from test_index_server import chroma_server  # noqa: F401 - the fixture, for the server rebuild test
from typer.testing import CliRunner

from shopsight.behavior.workspace import Workspace

WRITERS = 20


# --- concurrent writers ---------------------------------------------------------------------------


def test_twenty_processes_appending_to_one_conversation_lose_no_turn(tmp_path: Path) -> None:
    """Twenty spawned processes append at once (released together): every turn is kept, each with its own number."""
    from shopsight.agent.memory import ConversationStore

    path = tmp_path / "runs" / "conversations.sqlite"
    cid = ConversationStore(path).new_conversation("local", "test-model", "slack:T1:C1:1.0")
    ctx = multiprocessing.get_context("spawn")
    ready, go, turns = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=append_one_turn, args=(str(path), cid, n, ready, go, turns)) for n in range(WRITERS)]
    for w in writers:
        w.start()
    try:
        for _ in range(WRITERS):  # every process has opened the store before any appends
            assert ready.acquire(timeout=180), "a writer process did not start"
        go.set()
        reported = dict(turns.get(timeout=120) for _ in range(WRITERS))
    finally:
        for w in writers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in writers] == [0] * WRITERS

    assert sorted(reported.values()) == list(range(WRITERS))  # unique turn numbers, none skipped
    records = ConversationStore(path).records(cid)
    assert sorted(r["question"] for r in records) == sorted(f"question {n}" for n in range(WRITERS))
    # Stored in turn order: the record of turn t is the question whose append returned t.
    by_turn = {turn: n for n, turn in reported.items()}
    assert [r["question"] for r in records] == [f"question {by_turn[t]}" for t in range(WRITERS)]


# --- the CLI under broken inputs: helpers ---------------------------------------------------------

GOOD_CSV = "user_id,ts,event,item_id,category,price,quantity,session_id\nu1,2026-01-01T00:00:00Z,view,i1,A,1.0,1,s1\n"


def run_cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    """The real CLI in-process, as a user runs it: tracebacks off, no Chroma server from the machine's env."""
    from shopsight.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"SHOPSIGHT_RAISE_ERRORS": "", "SHOPSIGHT_CHROMA_URL": "", **(env or {})})


def assert_one_error_line(result: Result, *needles: str) -> str:
    """A non-zero exit, exactly one ``Error:`` line holding every needle (what is wrong, how to fix it), no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def no_logged_tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


class RandomVectors:
    """Unit vectors from a seeded generator: fills a test store in milliseconds (what is stored is not under test)."""

    threads = 1

    def embed(self, texts: list[str], batch_size: int = 64, threads: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def indexed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with events and a built index whose HNSW segment is on disk.

    chromadb keeps vectors in its SQLite log until 1,000 are waiting; the collection is created
    first with a sync threshold of 10, so these 121 sessions are flushed to segment files as a
    bigger index's would be (the files the corruption tests overwrite).
    """
    from shopsight.index.embedder import MiniLMEmbeddingFunction
    from shopsight.index.store import COLLECTION, SessionIndex

    ws = Workspace(tmp_path_factory.mktemp("indexed") / "ws")
    ws.save_events(make_events(users=40, seed=1))
    index = SessionIndex(ws, embedder=RandomVectors())  # type: ignore[arg-type]
    index._connect().get_or_create_collection(
        COLLECTION, embedding_function=MiniLMEmbeddingFunction(),
        configuration={"hnsw": {"space": "cosine", "sync_threshold": 10, "batch_size": 10}},
    )
    index.build()
    assert list(index.chroma_path.glob("*/data_level0.bin")), "the fixture must put an HNSW segment on disk"
    return ws.root


def corrupt(root: Path, what: str) -> None:
    """Damage a built store as a disk or a crash would: garbage over SQLite pages, or over the HNSW segment files."""
    chroma = root / "index" / "chroma"
    if what == "sqlite":
        db = chroma / "chroma.sqlite3"
        data = bytearray(db.read_bytes())
        for offset in range(4096, len(data), 4096):  # page 1 (the header) stays, so it still opens as SQLite
            data[offset : offset + 200] = b"\xa5" * 200
        db.write_bytes(bytes(data))
    else:
        for segment in chroma.glob("*/*.bin"):
            segment.write_bytes(b"garbage")


@pytest.fixture
def corrupted(indexed_template: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(what: str) -> Path:
        root = tmp_path / f"ws-{what}"
        shutil.copytree(indexed_template, root)
        corrupt(root, what)
        return root

    return make


# --- a corrupted index ------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["sqlite", "hnsw"])
@pytest.mark.parametrize("command", [["index", "stats"], ["index", "query", "--user", "u001"]])
def test_a_corrupted_index_is_one_error_line_saying_how_to_rebuild_it(
    corrupted: Callable[[str], Path], caplog: pytest.LogCaptureFixture, what: str, command: list[str],
) -> None:
    root = corrupted(what)
    with caplog.at_level(logging.WARNING):
        result = run_cli([*command, "--workspace", root])
    assert_one_error_line(result, "corrupted", f"shopsight index build --rebuild --workspace {root}")
    assert no_logged_tracebacks(caplog) == []


def test_ask_over_a_corrupted_index_answers_with_the_rebuild_command_and_no_traceback(
    corrupted: Callable[[str], Path], caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent's search tool reports the index as unavailable, with the fix, as it does a missing one.

    Tools hand a missing or broken index back to the model as a result (tools/context.py), so
    `ask` still answers (exit 0); before, the chromadb error was logged as a bug with its traceback.
    """
    root = corrupted("hnsw")
    llm = ScriptedOpenAI([{"tool_calls": [("search_histories", {"query": "garden hose"})]}] + [{"content": "done"}] * 3).start()
    try:
        with caplog.at_level(logging.WARNING):
            result = run_cli(["ask", "who looked at garden hoses?", "--backend", "openai", "--model", "scripted-model",
                              "--workspace", root], {"OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": "test"})
    finally:
        llm.stop()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output and "bug in ShopSight" not in result.output
    assert "shopsight index build --rebuild" in " ".join(result.output.split())
    assert no_logged_tracebacks(caplog) == []


def test_index_build_rebuild_replaces_a_corrupted_index(corrupted: Callable[[str], Path]) -> None:
    root = corrupted("sqlite")
    n = Workspace(root).load_events()["session_id"].nunique()

    built = run_cli(["index", "build", "--rebuild", "--json", "--workspace", root])
    assert built.exit_code == 0, built.output
    assert json.loads(built.output)["embedded"] == n

    stats = run_cli(["index", "stats", "--json", "--workspace", root])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["sessions"] == n and json.loads(stats.output)["sidecar"] is True
    history = run_cli(["index", "query", "--user", "u001", "--json", "--workspace", root])
    assert history.exit_code == 0 and json.loads(history.output)
    assert sorted(p.name for p in (root / "index").iterdir() if p.is_dir()) == ["chroma"]  # no staging or old folder left


def test_an_interrupted_rebuild_leaves_the_old_index_whole(indexed_template: Path, tmp_path: Path) -> None:
    from shopsight.index.store import SessionIndex

    root = tmp_path / "ws"
    shutil.copytree(indexed_template, root)
    before = SessionIndex(Workspace(root)).require_built()

    def stop_after_first_batch(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    index = SessionIndex(Workspace(root), embedder=RandomVectors(), batch_size=16)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        index.rebuild(progress=stop_after_first_batch)

    assert SessionIndex(Workspace(root)).require_built() == before
    assert sorted(p.name for p in (root / "index").iterdir() if p.is_dir()) == ["chroma"]


# --- a read-only workspace --------------------------------------------------------------------------


@contextmanager
def read_only(root: Path) -> Iterator[None]:
    """Make ``root`` and everything in it unwritable, for root as well.

    Root ignores the mode bits, so when the tests run as root the immutable attribute
    (``chattr +i``, enforced by the kernel for everyone) is set instead, and taken off after.
    """
    paths = [root, *root.rglob("*")]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a folder read-only for root")
    made = subprocess.run(["chattr", "-R", "+i", str(root)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this file system has no immutable attribute for a read-only test: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], check=True)


@pytest.fixture
def readonly_workspace(tmp_path: Path) -> Iterator[Path]:
    """A workspace holding events (enough history to train churn at a 7-day horizon), read-only for the test."""
    ws = Workspace(tmp_path / "ws")
    ws.save_events(make_events(users=60, seed=1))
    with read_only(ws.root):
        with pytest.raises(PermissionError):  # the set-up really is read-only
            (ws.root / "probe").write_text("x")
        yield ws.root


def test_ingest_into_a_read_only_workspace_is_one_error_line(readonly_workspace: Path, tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text(GOOD_CSV)
    assert_one_error_line(run_cli(["ingest", source, "--workspace", readonly_workspace]), str(readonly_workspace), "writable")


def test_index_build_in_a_read_only_workspace_is_one_error_line(readonly_workspace: Path) -> None:
    assert_one_error_line(run_cli(["index", "build", "--workspace", readonly_workspace]), str(readonly_workspace), "writable")


def test_train_in_a_read_only_workspace_is_one_error_line(readonly_workspace: Path) -> None:
    result = run_cli(["train", "churn", "--horizon", "7", "--epochs", "1", "--workspace", readonly_workspace])
    assert_one_error_line(result, str(readonly_workspace / "models"), "writable")


def test_ask_in_a_read_only_workspace_is_one_error_line(readonly_workspace: Path) -> None:
    llm = ScriptedOpenAI([{"content": "hello"}] * 3).start()
    try:
        result = run_cli(["ask", "hi", "--backend", "openai", "--model", "scripted-model", "--workspace", readonly_workspace],
                         {"OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": "test"})
    finally:
        llm.stop()
    assert_one_error_line(result, str(readonly_workspace / "runs"), "writable")


# --- broken model files -------------------------------------------------------------------------------


@pytest.fixture
def saved_churn(tmp_path: Path) -> Workspace:
    """A workspace with events and one saved churn version (its files are then damaged by the test)."""
    import torch

    from shopsight.behavior.models import registry

    ws = Workspace(tmp_path / "ws")
    ws.save_events(make_events(users=3, seed=1))
    registry.save_model(ws, "churn", state_dict={"w": torch.zeros(2)}, spec={"features": []}, card={"metrics": {}})
    return ws


@pytest.mark.parametrize(("file", "content", "kind"), [("card.json", "[]", "array"), ("spec.json", "null", "null")])
def test_a_model_file_of_the_wrong_json_shape_is_named_with_the_retrain_command(
    saved_churn: Workspace, file: str, content: str, kind: str,
) -> None:
    """`shopsight predict` and `shopsight models` name the file and the retrain command, with no traceback.

    Both commands list each model on its own row and show a broken one's error there (the other
    models stay visible), so they exit 0; before, `.get()` on a list or None crashed them.
    """
    damaged = saved_churn.models_dir / "churn" / "v1" / file
    damaged.write_text(content)
    commands = [["predict", "u001"]] + ([["models"]] if file == "card.json" else [])
    for command in commands:
        result = run_cli([*command, "--workspace", saved_churn.root], {"COLUMNS": "400"})
        assert result.exit_code == 0 and result.exception is None, (command, result.output, result.exception)
        assert "Traceback" not in result.output
        assert f"{damaged} is corrupted: it holds a JSON {kind}" in result.output
        assert "retrain with `shopsight train churn`" in result.output


def test_loading_a_model_with_a_null_spec_raises_a_model_error_naming_the_file(saved_churn: Workspace) -> None:
    from shopsight.behavior.models import registry
    from shopsight.behavior.models.common import ModelError

    (saved_churn.models_dir / "churn" / "v1" / "spec.json").write_text("null")
    with pytest.raises(ModelError, match=r"spec\.json is corrupted: it holds a JSON null.*shopsight train churn"):
        registry.load(saved_churn, "churn")


# --- bad paths and options ------------------------------------------------------------------------------


def test_an_unknown_encoding_is_one_error_line(tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text(GOOD_CSV)
    result = run_cli(["ingest", source, "--encoding", "klingon-8", "--workspace", tmp_path / "ws"])
    assert_one_error_line(result, "unknown text encoding 'klingon-8'", "--encoding", "latin-1")


def test_a_folder_without_event_files_is_one_error_line(tmp_path: Path) -> None:
    # A folder is read file by file (issue 18); one with nothing to read names itself and what it needs.
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "notes.md").write_text("not events")
    result = run_cli(["ingest", folder, "--workspace", tmp_path / "ws"])
    assert_one_error_line(result, str(folder), "the folder holds no CSV, TSV or Parquet file", "glob")


def test_a_folder_given_as_the_question_set_is_one_error_line(tmp_path: Path) -> None:
    # Before: IsADirectoryError's traceback.
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "mine.yaml").write_text("cases: []\n")
    result = run_cli(["eval", "run", tmp_path / "sets", "--workspace", tmp_path / "ws"])
    assert_one_error_line(result, f"{tmp_path / 'sets'} is a folder, not a question set", "mine.yaml")


@pytest.mark.parametrize("command", [["ingest", "events.csv"], ["index", "stats"], ["models"], ["index", "build"]])
def test_a_workspace_that_is_a_file_is_one_error_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "events.csv").write_text(GOOD_CSV)
    not_a_folder = tmp_path / "workspace.txt"
    not_a_folder.write_text("notes")
    args = [tmp_path / c if c == "events.csv" else c for c in command]
    result = run_cli([*args, "--workspace", not_a_folder])
    assert_one_error_line(result, f"the workspace {not_a_folder} is a file, not a folder", "--workspace")
    assert not_a_folder.read_text() == "notes"


def test_an_events_file_with_the_wrong_columns_names_them_and_the_map_fix(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text("customer,when,what\n1,2026-01-01,view\n")
    result = run_cli(["ingest", source, "--map", "user_id=custmer", "--workspace", tmp_path / "ws"])
    line = assert_one_error_line(result, "'user_id', 'ts', 'event'", "found: customer, when, what",
                                 "--map ts=YourColumn", "'custmer', which the file does not have")
    assert "--map user_id=YourColumn" in line


@pytest.mark.parametrize("command", [["index", "build"], ["train", "churn"]])
def test_a_workspace_events_file_with_the_wrong_columns_names_them_and_the_map_fix(tmp_path: Path, command: list[str]) -> None:
    """A Parquet file copied in as events.parquet: before, the first missing column's KeyError ("Error: price")."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    pd.DataFrame({"customer": ["1"], "when": ["2026-01-01"], "what": ["view"]}).to_parquet(ws.events_path)
    result = run_cli([*command, "--workspace", ws.root])
    assert_one_error_line(result, f"{ws.events_path} is not a ShopSight events file", "columns user_id, ts, event",
                          "found: customer, when, what",
                          "shopsight ingest FILE --map user_id=YOUR_COLUMN --map ts=YOUR_COLUMN --map event=YOUR_COLUMN")


def test_index_stats_on_a_missing_workspace_fails_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run_cli(["index", "stats", "--workspace", missing])
    assert_one_error_line(result, "is empty", f"no events in {missing} yet", f"shopsight demo --workspace {missing}",
                          f"shopsight ingest FILE --workspace {missing}")
    assert not missing.exists()


def test_index_stats_before_any_build_says_to_build_and_creates_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.save_events(make_events(users=2, seed=1))
    result = run_cli(["index", "stats", "--workspace", ws.root])
    assert_one_error_line(result, "is empty", f"shopsight index build --workspace {ws.root}")
    assert not ws.index_dir.exists()


@pytest.mark.slow
def test_rebuild_on_a_chroma_server_swaps_in_a_new_collection(chroma_server: str, tmp_path: Path) -> None:  # noqa: F811
    """On a server the rebuilt collection is built under a temporary name, then renamed over the old one."""
    from shopsight.index.store import COLLECTION, SessionIndex

    ws = Workspace(tmp_path / "ws")
    ws.save_events(make_events(users=6, seed=3))
    n = ws.load_events()["session_id"].nunique()
    old = SessionIndex(ws, chroma_url=chroma_server, embedder=RandomVectors())  # type: ignore[arg-type]
    old.build()
    stale = {"user_id": "u999", "session_id": "stale", "start": 0, "purchased": False, "categories": "||"}
    old.collection().upsert(ids=["stale"], embeddings=RandomVectors().embed(["x"]), documents=["x"], metadatas=[stale])
    old.close()

    stats = SessionIndex(ws, chroma_url=chroma_server, embedder=RandomVectors()).rebuild()  # type: ignore[arg-type]

    assert stats.embedded == n and stats.target == chroma_server
    fresh = SessionIndex(ws, chroma_url=chroma_server)
    assert fresh.require_built() == n and fresh.sidecar() is not None  # the record planted in the old one is gone
    assert [c.name for c in fresh._connect().list_collections()] == [COLLECTION]
