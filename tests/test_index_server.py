"""The session index against a real Chroma server (`chroma run`) on the loopback interface."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from shopsight.behavior.workspace import Workspace
from shopsight.index.store import SessionIndex
from servers import free_port, running  # tests/ is on sys.path (no __init__.py)
from test_index import SECRETS, make_events


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists():
        found = shutil.which("chroma")
        if found is None:
            pytest.fail("the `chroma` command from the chromadb package is not installed in this environment")
        exe = Path(found)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as r:
            return r.status == 200

    cmd = [str(exe), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1", "--port", str(port)]
    with running(cmd, ready, tmp_path / "chroma.log", timeout_s=60, name="chroma server"):
        yield url


def test_chroma_url_comes_from_the_environment_setting(monkeypatch) -> None:
    from shopsight.agent.settings import Settings

    monkeypatch.setenv("SHOPSIGHT_CHROMA_URL", "http://127.0.0.1:8123")
    assert Settings.from_env().chroma_url == "http://127.0.0.1:8123"
    monkeypatch.setenv("SHOPSIGHT_CHROMA_URL", "")
    assert Settings.from_env().chroma_url is None
    assert Settings.from_env(chroma_url="http://127.0.0.1:9") .chroma_url == "http://127.0.0.1:9"  # a flag beats the env


@pytest.mark.slow
def test_index_builds_and_answers_through_a_chroma_server(chroma_server: str, workspace: Workspace) -> None:
    events = make_events(users=8, seed=11)
    n = events["session_id"].nunique()
    index = SessionIndex(workspace, chroma_url=chroma_server)
    stats = index.build(events)
    assert (stats.embedded, stats.target) == (n, chroma_server)
    # Nothing was written to the embedded store: the vectors live on the server.
    assert not index.chroma_path.exists()

    again = SessionIndex(workspace, chroma_url=chroma_server)
    assert again.build(events).embedded == 0
    assert again.collection().count() == n

    user = events["user_id"].iloc[0]
    history = again.user_history(user)
    assert history and all(h.user_id == user for h in history)
    starts = [h.start for h in history]
    assert starts == sorted(starts, reverse=True)

    hits = again.search("garden hose", k=3, purchased=False)
    assert 0 < len(hits) <= 3 and all(h.metadata["purchased"] is False for h in hits)
    stored = again.collection().get(include=["documents"])
    assert not any(secret in doc for doc in stored["documents"] for secret in SECRETS.values())
