"""Personal data leaves through no door: an e-mail as user id, PII in texts and devices, followed to every exit.

A tiny shop is ingested from a canonical CSV whose user id is an e-mail address and whose
reviews, searches and device names carry phones, cards, an IBAN and an IP. Then the index
documents, the tools, the writer's input, the answer, its citations and JSON, the Slack blocks,
the logs and the stored conversation are searched for any of it.
"""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest

from shopsight.agent.backends import Written
from shopsight.agent.loop import Agent
from shopsight.agent.planner import PlanStep
from shopsight.agent.settings import Settings
from shopsight.agent.types import CallRequest, Usage

EMAIL_ID = "alice.smith+vip@example.com"
SECRETS = ["alice.smith", "example.com", "415 555 0134", "4155550134", "4111 1111 1111 1111", "4111111111111111",
           "DE89 3704 0044 0532 0130 00", "0532 0130", "203.0.113.45", "07700 900123"]

CSV = f"""user_id,ts,event,item_id,category,price,quantity,session_id,device,country,ip,text
{EMAIL_ID},2026-03-01 10:00:00,view,i1,Audio,120.0,1,,Alice's iPhone +1 415 555 0134,US,203.0.113.45,
{EMAIL_ID},2026-03-01 10:02:00,add_to_cart,i1,Audio,120.0,1,,Alice's iPhone +1 415 555 0134,US,203.0.113.45,
{EMAIL_ID},2026-03-01 10:05:00,purchase,i1,Audio,120.0,1,,Alice's iPhone +1 415 555 0134,US,203.0.113.45,
{EMAIL_ID},2026-03-04 09:00:00,review,i1,Audio,,1,,desktop,US,203.0.113.45,"Great! Pay back to card 4111 1111 1111 1111 or IBAN DE89 3704 0044 0532 0130 00, call 07700 900123"
bob,2026-03-02 11:00:00,view,i2,Books,15.0,1,,mobile,GB,198.51.100.7,
bob,2026-03-02 11:01:00,search,,Books,,1,,mobile,GB,198.51.100.7,mail {EMAIL_ID} about the book
"""


def alice(events) -> str:
    """The pseudonym the e-mail user id was given at ingest."""
    return next(u for u in events["user_id"].unique() if str(u).startswith("user-"))


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s.lower() in text.lower()]


@pytest.fixture
def shop(workspace, tmp_path):
    from shopsight.behavior.ingest import ingest_file

    path = tmp_path / "events.csv"
    path.write_text(CSV)
    events, report = ingest_file(workspace, path)
    return workspace, events, report


class EchoWriter:
    """The worst writer: it repeats every fact it is given, word for word."""

    name = "echo"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def write(self, messages, on_token=None) -> Written:
        self.seen += [m["content"] for m in messages]
        return Written(messages[-1]["content"], Usage())


class Calls:
    name, version = "fixed", None

    def __init__(self, *requests: CallRequest) -> None:
        self.requests = requests

    def step(self, question, history, calls, on_token=None) -> PlanStep:
        return PlanStep() if calls else PlanStep(calls=self.requests)


def test_the_workspace_stores_no_personal_data(shop):
    ws, events, report = shop
    stored = b"".join(p.read_bytes() for p in ws.event_files()).decode("latin-1")
    assert leaks(stored) == [] and leaks(events.to_csv()) == []
    pseudonym = alice(events)
    assert set(events["user_id"]) == {pseudonym, "bob"} and pseudonym != EMAIL_ID
    assert events["session_id"].str.startswith(pseudonym).sum() == 4  # the session ids follow the pseudonym
    assert any("pseudonym" in note for note in report.to_dict()["notes"])


def test_index_documents_and_metadata_carry_no_personal_data(shop):
    from shopsight.index.documents import session_documents

    ws, events, _ = shop
    docs = session_documents(events, ws.load_catalogue())
    assert leaks(docs.to_json()) == []


def test_no_exit_of_an_answer_carries_personal_data(shop, caplog):
    from shopsight.agent.memory import ConversationStore
    from shopsight.integrations import slack_blocks
    from shopsight.tools import ToolContext

    ws, events, _ = shop
    user = alice(events)
    writer = EchoWriter()
    ctx = ToolContext(ws, events=events)
    agent = Agent(Settings.from_env(), ctx, Calls(CallRequest("get_user_history", {"user_id": user}, "a"),
                                                  CallRequest("get_user_profile", {"user_id": user}, "b")),
                  writer, backend="test", model="echo")
    caplog.set_level(logging.DEBUG)
    question = f"what did {EMAIL_ID} (call 07700 900123) do?"
    a = agent.ask(question)
    exits = {
        "writer input": "\n".join(writer.seen),
        "answer": a.answer,
        "citations": json.dumps(a.citations.sessions),
        "json": json.dumps(a.to_dict(), default=str),
        "slack": json.dumps(slack_blocks.answer_blocks(a.answer, citations=a.citations.sessions)),
        "logs": caplog.text,
    }
    with sqlite3.connect(ConversationStore.for_workspace(ws).path) as con:
        exits["stored conversation"] = "\n".join(r[0] + r[1] for r in con.execute("SELECT question, record FROM answers"))
    assert {door: leaks(text) for door, text in exits.items() if leaks(text)} == {}
    assert user in a.answer  # the pseudonym is what the analyst sees and cites
    assert user in a.question  # the e-mail the analyst typed was resolved to the user it names
