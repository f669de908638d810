"""The native tool-calling loop end to end over HTTP: a scripted OpenAI-compatible server emitting real tool_calls."""

from __future__ import annotations

import json

import pytest

from shopsight.agent.loop import build_agent
from shopsight.agent.settings import Settings
from fake_openai import ScriptedOpenAI
from test_agent_support import tiny_context


@pytest.fixture
def hosted(workspace):
    servers: list[ScriptedOpenAI] = []

    def start(replies, **settings):
        server = ScriptedOpenAI(replies).start()
        servers.append(server)
        s = Settings.from_env(backend="openai", openai_base_url=server.url, model="scripted-model", retries=0, **settings)
        return build_agent(s, workspace, ctx=tiny_context(workspace)), server

    yield start
    for server in servers:
        server.stop()


def _tool_messages(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "tool"]


CHURN_U3 = [{"tool_calls": [("predict_churn", {"user_id": "u00003"})]},
            {"content": "u00003 will likely churn: 88.1%, mostly because of the days since their last event."}]


def test_tool_calls_run_and_the_models_answer_is_kept_without_streaming(hosted):
    agent, server = hosted(CHURN_U3)
    a = agent.ask("why is u00003 likely to churn?")
    assert [(c.name, dict(c.args)) for c in a.tool_calls] == [("predict_churn", {"user_id": "u00003"})]
    assert a.answer.startswith("u00003 will likely churn: 88.1%") and a.guard.outcome == "accepted"
    assert "churn@v1" in a.answer and a.plan.planner == "native" and a.plan.steps == 2
    assert a.usage.prompt == 200 and a.usage.completion > 0  # both model turns, as the server reported them
    first = server.requests[0]
    assert not first.get("stream") and {t["function"]["name"] for t in first["tools"]} >= {"predict_churn", "top_users"}
    assert "ctx" not in json.dumps(first["tools"])  # the hidden context is never shown
    (result,) = _tool_messages(server.requests[1])
    assert json.loads(result["content"])["probability"] == 0.881


def test_streamed_tool_call_deltas_and_answer_tokens(hosted):
    agent, server = hosted(CHURN_U3)
    tokens: list[str] = []
    a = agent.ask("why is u00003 likely to churn?", on_token=tokens.append)
    assert server.requests[0]["stream"] is True
    assert [(c.name, dict(c.args)) for c in a.tool_calls] == [("predict_churn", {"user_id": "u00003"})]
    assert "".join(tokens).strip() == "u00003 will likely churn: 88.1%, mostly because of the days since their last event."
    assert a.timings.first_token_s is not None and a.usage.prompt == 200


def test_a_tool_error_goes_back_to_the_model_which_recovers(hosted):
    agent, server = hosted([
        {"tool_calls": [("predict_churn", {"customer": "u00003"})]},   # a bad argument name
        {"tool_calls": [("predict_churn", {"user_id": "u77777"})]},    # an unknown user
        {"tool_calls": [("predict_churn", {"user_id": "u00003"})]},
        {"content": "u00003: 88.1% likely to churn."},
    ])
    a = agent.ask("will u00003 churn?")
    errors = [json.loads(m["content"]) for m in _tool_messages(server.requests[2])]
    assert errors[0]["error"].startswith("bad arguments for predict_churn") and "user_id" in errors[0]["error"]
    assert errors[1]["error"] == "no such user" and errors[1]["user_id"] == "u77777"
    assert [c.failed for c in a.tool_calls] == [True, True, False] and a.plan.steps == 4
    assert a.answer.startswith("u00003: 88.1% likely to churn.") and a.guard.ok


def test_the_step_limit_stops_a_model_that_keeps_calling_tools(hosted):
    loop = [{"tool_calls": [("get_user_profile", {"user_id": "u00001"})]}] * 3
    agent, server = hosted(loop + [{"content": "no numbers here"}], max_steps=3)
    a = agent.ask("tell me everything about u00001")
    assert a.plan.step_limit_hit and a.plan.steps == 3 and len(a.tool_calls) == 3
    # the writer then phrased the answer from what had run (one more request), and the guard kept the facts
    assert len(server.requests) == 5 and a.guard.replaced
    assert a.answer.startswith("User u00001 has spent $120.00 over 1 order")


def test_an_invented_number_is_rewritten_through_the_same_server(hosted):
    agent, server = hosted([
        {"tool_calls": [("predict_intent", {"user_id": "u00004"})]},
        {"content": "Intent is 97%."},
        {"content": "Intent is 91.5%."},
    ])
    a = agent.ask("will u00004 buy?")
    assert a.guard.rewritten and not a.guard.replaced and a.answer.startswith("Intent is 91.5%.")
    assert "97%" in json.dumps(server.requests[2]["messages"])  # the rewrite request names the unsupported number
