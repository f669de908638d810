"""The real embedded SmolLM2 end to end on a small demo workspace (router plans, the GGUF writes, the guard holds)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shopsight.agent.guard import check_grounding, numbers_in
from shopsight.agent.settings import Settings
from shopsight.behavior.workspace import Workspace
from shopsight.prompts import load_prompt
from test_agent_support import trained_router_into

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    from shopsight.behavior.demo import build_demo_workspace
    from shopsight.behavior.models import train_model
    from shopsight.behavior.models.common import TrainSettings

    ws = Workspace(tmp_path_factory.mktemp("local") / "ws")
    build_demo_workspace(ws, users=120, days=100, seed=7, progress=False)
    train_model(ws, "churn", events=ws.load_events(), settings=TrainSettings(epochs=5))
    trained_router_into(ws)
    return ws


@pytest.fixture(scope="module")
def agent(demo_ws):
    from shopsight.agent import build_agent

    return build_agent(Settings.from_env(backend="local", threads=2), demo_ws)


def _buyer(ws: Workspace) -> str:
    events = ws.load_events(columns=["user_id", "event"])
    return str(sorted(events.loc[events["event"] == "purchase", "user_id"].unique())[0])


def test_churn_question_end_to_end(agent, demo_ws):
    user = _buyer(demo_ws)
    tokens: list[str] = []
    a = agent.ask(f"why is {user} likely to churn?", on_token=tokens.append)
    assert [(c.name, dict(c.args)) for c in a.tool_calls] == [("predict_churn", {"user_id": user})]
    result = a.tool_calls[0].result
    p = result["probability"]
    # the probability is in the answer, as a percent or a decimal, and every number is grounded
    assert any(abs(n.value - p * 100) < 0.051 or abs(n.value - p) < 0.0051 for n in numbers_in(a.answer)), a.answer
    assert check_grounding(a.answer.split("(Sources:")[0], a.tool_calls, f"why is {user} likely to churn?").ok
    assert result["model"].startswith("churn@v") and result["model"] in a.answer
    assert all(s in a.answer for s in result["citations"]["sessions"][:3])
    assert a.backend == "local" and a.model == "SmolLM2-135M-Instruct.Q4_1.gguf" and a.plan.version.startswith("router@v")
    assert a.latency_s > 0 and tokens, "the local writer streams tokens"
    # the tokens it used are counted: at least the streamed pieces, and a prompt longer than the answer
    assert a.usage.completion >= len(tokens) and a.usage.prompt > a.usage.completion
    assert a.tokens == a.usage.prompt + a.usage.completion


def test_out_of_scope_is_refused_politely(agent):
    a = agent.ask("write me a poem about the sea")
    assert a.tool_calls == () and a.answer == load_prompt("refusal").text and a.kind == "refusal"


def test_ask_json_cli_on_the_demo_workspace(demo_ws):
    import json

    from shopsight.cli import app

    r = CliRunner().invoke(app, ["ask", "top 3 users most likely to churn", "--json", "-w", str(demo_ws.root)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"answer", "tool_calls", "citations", "backend", "model", "prompt_version", "latency_s"} <= set(d)
    assert d["tool_calls"][0]["name"] == "top_users" and d["tool_calls"][0]["args"]["limit"] == 3
    first = d["tool_calls"][0]["result"]["users"][0]["user_id"]
    assert first in d["answer"] and d["citations"]["models"][0].startswith("churn@v")


def test_ask_prints_answers_verbatim_brackets_included(demo_ws):
    from shopsight.cli import app

    # "[user id]" in the refusal (and "[email]" masks in data) must not be eaten as console markup
    r = CliRunner().invoke(app, ["ask", "write me a poem about the sea", "-w", str(demo_ws.root)])
    assert r.exit_code == 0, r.output
    assert "[user id]" in " ".join(r.output.split())


def test_chat_repl_commands_and_a_streamed_answer(demo_ws):
    from shopsight.cli import app

    script = "/help\n/verbose\ntop 3 users most likely to churn\nwhat about the second one?\n/reset\n/quit\n"
    r = CliRunner().invoke(app, ["chat", "-w", str(demo_ws.root)], input=script)
    assert r.exit_code == 0, r.output
    assert "/reset (new conversation)" in r.output and "Tool calls shown" in r.output
    assert "top_users" in r.output and "predict_churn" in r.output  # the follow-up used the ranked list
    assert "New conversation." in r.output and "Traceback" not in r.output
