"""The grounding guard: which numbers and ids an answer may show, and the deterministic fallback."""

from __future__ import annotations

import pytest

from agent.guard import check_grounding, citations, numbers_in, render_answer, with_citations
from prompts import load_prompt

CHURN = {"model": "churn@v3", "user_id": "u00042", "probability": 0.734, "factors": [
    {"name": "days_since_last_purchase", "value": 45, "direction": "raises"}], "rules": ["overdue"],
    "citations": {"sessions": ["u00042-s0007"], "model": "churn@v3"}}


def test_ids_dates_versions_and_years_are_not_numbers():
    text = "u00042 (session u00042-s0007, order o000123) on 2026-03-04 10:15 per churn@v3 in 2026"
    assert numbers_in(text) == []


def test_currency_thousands_and_percent_are_read():
    shown = [(n.value, n.decimals, n.percent) for n in numbers_in("$1,234.50 and 73.4% of 12")]
    assert shown == [(1234.5, 2, False), (73.4, 1, True), (12.0, 0, False)]


@pytest.mark.parametrize("answer", ["73%", "73.4%", "0.734", "0.73", "73.4 percent"])
def test_roundings_of_tool_numbers_pass(answer):
    assert check_grounding(f"u00042: {answer}, 45 days since the last purchase", [CHURN]).ok


@pytest.mark.parametrize("answer,bad", [("74.1%", "74.1%"), ("0.81", "0.81"), ("45%", "45%"), ("12 orders", "12")])
def test_numbers_no_tool_returned_fail(answer, bad):
    r = check_grounding(f"Churn is 73.4%; {answer}.", [CHURN])
    assert not r.ok and r.unsupported == [bad]


def test_numbers_from_the_question_may_be_repeated():
    assert check_grounding("Here are the top 10: 73.4%.", [CHURN], question="top 10 by churn").ok


def test_an_invented_id_fails():
    r = check_grounding("u00043 has 73.4%.", [CHURN])
    assert r.unsupported == ["u00043"]


def test_leaving_out_the_probability_fails():
    r = check_grounding("The user is overdue.", [CHURN])
    assert not r.ok and r.missing == ["probability 0.734"]


def test_a_ranking_must_name_its_top_user():
    ranked = {"users": [{"rank": 1, "user_id": "u00003", "probability": 0.9}, {"rank": 2, "user_id": "u00001", "probability": 0.8}]}
    assert check_grounding("u00003 leads with 90%.", [ranked]).ok
    assert check_grounding("u00001 is second.", [ranked]).missing == ["top user u00003"]


def test_a_looping_draft_fails():
    ranked = {"users": [{"rank": 1, "user_id": "u00003", "probability": 0.9}]}
    assert not check_grounding("u00003, " * 9, [ranked]).ok


def test_repeating_the_system_prompt_is_a_leak():
    system = load_prompt("system").text
    r = check_grounding("Sure! " + system.splitlines()[3], [], system_prompt=system)
    assert r.leaked_prompt and not r.ok


def test_render_answer_is_grounded_and_cited():
    calls = [{"name": "predict_churn", "args": {"user_id": "u00042"}, "result": CHURN}]
    text = with_citations(render_answer(calls), citations(calls))
    assert text.startswith("The churn probability for user u00042 is 73.4%.")
    assert "u00042-s0007" in text and "churn@v3" in text
    assert check_grounding(text, [CHURN]).ok


def test_render_answer_for_an_error_result():
    calls = [{"name": "predict_churn", "args": {"user_id": "u9"}, "result": {"error": "no such user", "user_id": "u9", "hint": "ids look like u00001"}}]
    assert render_answer(calls) == "No such user: u9. ids look like u00001"


def test_a_clause_said_three_times_fails():
    text = "The churn probability for u00042 is 73.4% and " * 3
    assert check_grounding(text, [CHURN]).missing == ["a readable answer (the draft repeats itself)"]


def test_a_truncated_id_is_not_taken_for_a_longer_one():
    assert check_grounding("u0004 has 73.4%.", [CHURN]).unsupported == ["u0004"]
