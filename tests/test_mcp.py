"""`shopsight mcp` driven by the MCP SDK's own client, over stdio and over HTTP, on a small trained demo shop.

One module-scoped workspace (120 users, the three models trained briefly, the sessions indexed with
the real MiniLM, a review with an e-mail and a phone planted unmasked). The stdio server runs once
for a recorded scenario; the HTTP server runs once for the HTTP tests. Expected results are computed
in this process with Registry.run on the same workspace: the server must add and hide nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pandas as pd
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from servers import free_port, running
from test_agent_support import EMAIL, PHONE, trained_router_into
from typer.testing import CliRunner

from shopsight.behavior.workspace import Workspace
from shopsight.tools import ToolContext, default_registry, result_json

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-7c1e9b"
PII_USER = "u00042"
PII_SESSION = "u00042-s0900"
CALL_TIMEOUT_S = 120


# --- the shop --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings
    from shopsight.index.store import SessionIndex

    ws = Workspace(tmp_path_factory.mktemp("mcp") / "ws")
    build_demo_workspace(ws, users=120, days=100, seed=7, progress=False)
    events = ws.load_events()
    # A review written before masking existed (saved as it came, not through ingest): the tools must mask it.
    last = events.loc[events["user_id"] == PII_USER].iloc[-1]
    planted = pd.DataFrame([last.to_dict(), last.to_dict()])
    planted["session_id"] = PII_SESSION
    planted["ts"] = [last["ts"] + pd.Timedelta(days=1), last["ts"] + pd.Timedelta(days=1, minutes=2)]
    planted["event"] = ["view", "review"]
    planted["text"] = [None, f"Great headphones, mail me at {EMAIL} or call {PHONE}"]
    events = pd.concat([events, planted.astype(events.dtypes.to_dict())], ignore_index=True)
    events = events.sort_values(["user_id", "ts"], kind="stable", ignore_index=True)
    ws.save_events(events)
    for name in ("intent", "churn", "risk", "recommend"):
        train_model(ws, name, events=events, settings=TrainSettings(epochs=3))
    SessionIndex(ws).build()
    return ws.root


@pytest.fixture(scope="module")
def local_ctx(shop_root: Path) -> ToolContext:
    return ToolContext(Workspace(shop_root))


def tool_cases(root: Path) -> dict[str, dict[str, Any]]:
    """One well-formed call of every registry tool on this shop (a tool without a case fails the test)."""
    events = Workspace(root).load_events(columns=["user_id", "order_id"])
    order = str(events["order_id"].dropna().iloc[0])
    return {
        "compare_users": {"user_ids": [PII_USER, "u00007"]},
        "get_order": {"order_id": order},
        "get_user_history": {"user_id": PII_USER},
        "get_user_profile": {"user_id": PII_USER},
        "predict_churn": {"user_id": PII_USER},
        "predict_intent": {"user_id": PII_USER},
        "query_metric": {"metric": "session_conversion", "group_by": "device"},
        "recommend_items": {"user_id": PII_USER},
        "risk_decisions": {"decision": "block"},
        "score_risk": {"user_id": PII_USER},
        "search_histories": {"query": "headphones review mail me"},
        "segment_summary": {"device": "mobile"},
        "top_users": {"metric": "churn", "limit": 3},
    }


def expected(ctx: ToolContext, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """What the agent's model sees for this call: Registry.run's result as bounded JSON, parsed."""
    return json.loads(result_json(default_registry().run(ctx, name, args)))


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOPSIGHT_MCP_TOKEN", "SHOPSIGHT_HOME")}
    return env | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"} | extra


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


# --- stdio: one server process, one recorded scenario ------------------------------------------------
@asynccontextmanager
async def stdio_session(root: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=[str(ROOT / "cli.py"), "mcp", "--workspace", str(root)],
                                   env=server_env(), cwd=str(ROOT))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.fixture(scope="module")
def stdio_run(shop_root: Path) -> dict[str, Any]:
    """Everything the stdio tests look at, from one server process."""
    cases = tool_cases(shop_root)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {"calls": {}}
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with stdio_session(shop_root) as s:
                out["tools"] = (await s.list_tools()).tools
                for name, args in cases.items():
                    out["calls"][name] = await s.call_tool(name, args)
                out["bad_argument"] = await s.call_tool("top_users", {"metric": "sideways"})
                out["unknown_user"] = await s.call_tool("predict_churn", {"user_id": "u99999"})
                out["email_as_user"] = await s.call_tool("get_user_profile", {"user_id": EMAIL})
                out["resources"] = (await s.list_resources()).resources
                out["card"] = json.loads((await s.read_resource("shopsight://models/churn")).contents[0].text)
                out["dictionary"] = json.loads((await s.read_resource("shopsight://data-dictionary")).contents[0].text)
                out["prompts"] = (await s.list_prompts()).prompts
                out["explain_prompt"] = await s.get_prompt("explain_user", {"user_id": PII_USER})
                out["review_prompt"] = await s.get_prompt("weekly_churn_review", {})
                churn = out["calls"]["predict_churn"]
                used = [{"name": "predict_churn", "args": cases["predict_churn"], "result": text_of(churn)}]
                out["invented"] = await s.call_tool("check_answer", {
                    "answer": f"{PII_USER} has a 93% chance of churning.", "tool_results": used, "question": "will u00042 churn?"})
                # The narrative's own words, without its evidence clause (which retells free-text details,
                # never a source for the guard): a draft that states only what the result holds.
                narrative = default_registry().render("predict_churn", cases["predict_churn"], json.loads(text_of(churn)))
                out["grounded"] = await s.call_tool("check_answer", {
                    "answer": narrative.split(" Evidence:")[0], "tool_results": used, "question": "will u00042 churn?"})
        return out

    return anyio.run(scenario)


def test_lists_every_registry_tool_read_only_with_its_schema_and_docstring(stdio_run):
    import inspect

    registry = default_registry()
    tools = {t.name: t for t in stdio_run["tools"]}
    assert list(tools) == [*registry.names, "check_answer"]
    for spec in registry:
        t = tools[spec.name]
        assert t.inputSchema == registry.arguments_schema(spec.name)
        assert t.description == inspect.getdoc(spec.func)
    assert all(t.annotations.readOnlyHint and not t.annotations.destructiveHint for t in tools.values())
    assert tools["check_answer"].inputSchema["required"] == ["answer", "tool_results"]


def test_every_tool_answers_what_the_agent_sees(stdio_run, local_ctx, shop_root):
    cases = tool_cases(shop_root)
    assert set(cases) == set(default_registry().names)
    for name, args in cases.items():
        result = stdio_run["calls"][name]
        assert not result.isError, (name, text_of(result))
        assert json.loads(text_of(result)) == expected(local_ctx, name, args), name


def test_results_carry_citations(stdio_run):
    churn = json.loads(text_of(stdio_run["calls"]["predict_churn"]))
    assert churn["citations"]["model"] == "churn@v1" and churn["citations"]["sessions"]
    history = json.loads(text_of(stdio_run["calls"]["get_user_history"]))
    assert PII_SESSION in history["citations"]["sessions"]


def test_bad_argument_is_a_tool_error_with_the_hint(stdio_run):
    result = stdio_run["bad_argument"]
    body = json.loads(text_of(result))
    assert result.isError
    assert body["error"].startswith("bad arguments for top_users: metric") and "sideways" in body["error"]
    assert body["hint"] == default_registry().get("top_users").summary


def test_unknown_user_is_a_tool_error_with_the_hint(stdio_run, local_ctx):
    result = stdio_run["unknown_user"]
    assert result.isError
    assert json.loads(text_of(result)) == expected(local_ctx, "predict_churn", {"user_id": "u99999"})
    assert "user ids look like 'u00001'" in json.loads(text_of(result))["hint"]


def test_personal_data_never_comes_back(stdio_run):
    history = text_of(stdio_run["calls"]["get_user_history"])
    assert PII_SESSION in history and "[email]" in history  # the planted review is there, masked
    texts = [text_of(r) for r in stdio_run["calls"].values()] + [text_of(stdio_run["email_as_user"])]
    for text in texts:
        assert EMAIL not in text and PHONE not in text
        assert not re.search(r"[\w.]+@[\w-]+\.\w+", text), text[:300]
    assert stdio_run["email_as_user"].isError  # an e-mail as an id is masked, then not found


def test_check_answer_catches_an_invented_number(stdio_run):
    invented = json.loads(text_of(stdio_run["invented"]))
    assert not stdio_run["invented"].isError
    assert invented["ok"] is False and "93%" in invented["unsupported"] and invented["hint"]
    grounded = json.loads(text_of(stdio_run["grounded"]))
    assert grounded == {"ok": True, "unsupported": [], "missing": [], "problems": []}


def test_check_answer_flags_personal_data_and_unknown_tools(local_ctx):
    from shopsight.integrations.mcp_server import check_answer

    registry = default_registry()
    leaked = check_answer(local_ctx, registry, {"answer": f"Write to {EMAIL}.", "tool_results": []})
    assert leaked["ok"] is False and any("personal data" in p for p in leaked["problems"])
    unknown = check_answer(local_ctx, registry, {"answer": "x", "tool_results": [{"name": "drop_table", "result": {}}]})
    assert unknown["error"] == "tool_results.0: no tool named 'drop_table'" and "predict_churn" in unknown["hint"]
    malformed = check_answer(local_ctx, registry, {"tool_results": []})
    assert malformed["error"].startswith("bad arguments for check_answer: answer")


def test_model_cards_and_data_dictionary_are_resources(stdio_run):
    uris = {str(r.uri) for r in stdio_run["resources"]}
    assert uris == {"shopsight://data-dictionary", "shopsight://models/intent", "shopsight://models/churn",
                    "shopsight://models/risk"}
    card = stdio_run["card"]
    who = {row["who"] for row in card["metrics_vs_baselines"]}
    assert "churn@v1" in who and len(who) >= 3  # the model beside its baselines
    assert card["data_window"]["first_event"] and card["data_window"]["test_cutoff"]
    phrases = {row["name"]: row["phrase"] for row in card["glossary"]["features"]}
    assert phrases.get("days_since_last_event")
    columns = {c["name"]: c for c in stdio_run["dictionary"]["columns"]}
    assert columns["user_id"]["present"] and columns["user_id"]["meaning"]
    assert stdio_run["dictionary"]["summary"]["users"] == 120
    assert "session_conversion" in stdio_run["dictionary"]["query_metric"]["metrics"]


def test_prompts_name_the_user_and_the_check(stdio_run):
    assert {p.name for p in stdio_run["prompts"]} == {"explain_user", "weekly_churn_review"}
    explain = stdio_run["explain_prompt"].messages[0].content.text
    assert f'user_id="{PII_USER}"' in explain and "check_answer" in explain
    review = stdio_run["review_prompt"].messages[0].content.text
    assert "week ending 2026-" in review and "top_users" in review and "$" not in review


# --- HTTP: one server process behind a token ------------------------------------------------------------
@pytest.fixture(scope="module")
def http_url(shop_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    cmd = [sys.executable, str(ROOT / "cli.py"), "mcp", "--http", str(port), "--workspace", str(shop_root)]
    log = tmp_path_factory.mktemp("mcp-http") / "server.log"

    def up() -> bool:  # the token guard answers before anything else does
        try:
            return httpx.get(url, timeout=2).status_code == 401
        except httpx.TransportError:
            return False

    with running(cmd, up, log, timeout_s=120,
                 name="shopsight mcp --http", env=server_env(SHOPSIGHT_MCP_TOKEN=TOKEN)):
        yield url


@asynccontextmanager
async def http_session(url: str, token: str = TOKEN) -> AsyncIterator[ClientSession]:
    async with (httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client,
                streamable_http_client(url, http_client=client) as (read, write, _),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_http_refuses_a_missing_or_wrong_token(http_url):
    missing = httpx.post(http_url, json=INITIALIZE, headers=MCP_HEADERS, timeout=10)
    wrong = httpx.post(http_url, json=INITIALIZE, headers=MCP_HEADERS | {"Authorization": "Bearer not-the-token"}, timeout=10)
    right = httpx.post(http_url, json=INITIALIZE, headers=MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert missing.status_code == 401 and wrong.status_code == 401
    assert "SHOPSIGHT_MCP_TOKEN" in missing.json()["hint"]
    assert right.status_code == 200


def test_http_refuses_a_foreign_host_header(http_url):
    # DNS rebinding: a web page whose name resolves to 127.0.0.1 sends its own Host header.
    port = http_url.split(":")[2].split("/")[0]
    headers = MCP_HEADERS | {"Authorization": f"Bearer {TOKEN}", "Host": f"shop.evil.example:{port}"}
    assert httpx.post(http_url, json=INITIALIZE, headers=headers, timeout=10).status_code == 421


def test_http_client_lists_and_calls_every_tool(http_url, local_ctx, shop_root):
    cases = tool_cases(shop_root)

    async def scenario() -> tuple[list[str], dict[str, Any], Any]:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with http_session(http_url) as s:
                names = [t.name for t in (await s.list_tools()).tools]
                results = {name: await s.call_tool(name, args) for name, args in cases.items()}
                bad = await s.call_tool("get_user_history", {"user_id": PII_USER, "limit": "many"})
        return names, results, bad

    names, results, bad = anyio.run(scenario)
    assert names == [*default_registry().names, "check_answer"]
    for name, args in cases.items():
        assert not results[name].isError, (name, text_of(results[name]))
        assert json.loads(text_of(results[name])) == expected(local_ctx, name, args), name
    assert bad.isError and "bad arguments for get_user_history: limit" in text_of(bad)


def test_http_answers_eight_concurrent_calls_correctly(http_url, local_ctx):
    users = [f"u{n:05d}" for n in (1, 5, 9, 17, 42, 63, 88, 120)]
    got: dict[str, Any] = {}

    async def scenario() -> None:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with http_session(http_url) as s:
                async def one(user: str) -> None:
                    got[user] = await s.call_tool("predict_churn", {"user_id": user})

                async with anyio.create_task_group() as tg:
                    for user in users:
                        tg.start_soon(one, user)

    anyio.run(scenario)
    assert set(got) == set(users)
    for user in users:
        assert not got[user].isError, text_of(got[user])
        assert json.loads(text_of(got[user])) == expected(local_ctx, "predict_churn", {"user_id": user})


def test_refuses_a_public_address_without_a_token(shop_root, monkeypatch):
    from shopsight import cli
    monkeypatch.delenv("SHOPSIGHT_MCP_TOKEN", raising=False)
    out = CliRunner().invoke(cli.app, ["mcp", "--http", "8999", "--host", "0.0.0.0", "--workspace", str(shop_root)])
    assert out.exit_code == 2
    assert "refusing to serve MCP on 0.0.0.0 without a token" in out.output and "SHOPSIGHT_MCP_TOKEN" in out.output


def test_help_shows_the_claude_registrations():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "mcp", "--help"], capture_output=True, text=True, check=False,
                         env=server_env(COLUMNS="200"), timeout=60)
    assert out.returncode == 0
    assert "claude mcp add shopsight -- shopsight mcp --workspace PATH" in out.stdout
    assert '{"mcpServers": {"shopsight": {"command": "shopsight", "args": ["mcp", "--workspace", "PATH"]}}}' in out.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "claude mcp add shopsight -- shopsight mcp --workspace PATH" in readme and '"mcpServers"' in readme


# --- the Python API ---------------------------------------------------------------------------------------
def readme_python_example() -> str:
    """The Python block of the README's "Python API" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


def test_readme_python_example_runs(shop_root, tmp_path, monkeypatch, capsys):
    import shopsight

    trained_router_into(Workspace(shop_root))
    (tmp_path / "workspace").symlink_to(shop_root)  # the example opens ./workspace
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHOPSIGHT_WRITER", "none")  # the router plans, the deterministic narrative answers: no LLM
    monkeypatch.delenv("SHOPSIGHT_HOME", raising=False)
    scope: dict[str, Any] = {}
    exec(compile(readme_python_example(), "README.md", "exec"), scope)  # noqa: S102 - our own README
    shop = scope["shop"]
    assert isinstance(shop, shopsight.Shop)
    assert scope["churn"] == shop.tool("predict_churn", user_id="u00042")
    assert scope["scores"].attrs["model"] == "churn@v1" and len(scope["scores"]) == 120
    answer = scope["answer"]
    assert [c.name for c in answer.tool_calls] == ["top_users"] and answer.citations.models == ("churn@v1",)
    assert answer.answer in capsys.readouterr().out


def test_python_api_raises_tool_errors_with_the_hint(shop_root):
    import shopsight

    with shopsight.open_workspace(shop_root) as shop:
        with pytest.raises(shopsight.ToolError, match="no such user .*user ids look like") as err:
            shop.predict_churn(user_id="u99999")
        assert err.value.result["error"] == "no such user"
        with pytest.raises(KeyError, match="no tool 'drop_table'"):
            shop.tool("drop_table")
        with pytest.raises(ValueError, match="no model 'fraud'"):
            shop.scores("fraud")
        assert "predict_churn" in dir(shop) and shop.predict_churn.__doc__.startswith("Will this user stop buying?")


def test_skill_and_llms_txt_name_every_tool():
    names = [*default_registry().names, "check_answer"]
    skill = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    llms = (ROOT / "llms.txt").read_text(encoding="utf-8")
    assert skill.startswith("---\nname: shopsight\ndescription: ")
    assert [n for n in names if f"`{n}`" not in skill] == []
    assert [n for n in names if n not in llms] == []
