"""Prompts load from package files, fill their placeholders strictly and carry a content-hash version."""

from __future__ import annotations

import pytest

from shopsight.prompts import PROMPT_NAMES, PromptError, load_prompt, prompt_set_version


def test_every_prompt_file_loads_with_a_version():
    templates = {"answer_style": {"question": "q", "facts": "f"}, "limit": {"cannot": "c", "nearest": "n"}}
    for name in PROMPT_NAMES:
        p = load_prompt(name, **templates.get(name, {}))
        assert p.text and len(p.version) == 12


def test_placeholders_are_filled():
    p = load_prompt("answer_style", question="Q?", facts="The churn probability is 50.0%.")
    assert "Q?" in p.text and "50.0%" in p.text and "$" not in p.text


def test_missing_variable_raises_naming_it():
    with pytest.raises(PromptError, match=r"\$facts"):
        load_prompt("answer_style", question="Q?")


def test_unknown_prompt_raises():
    with pytest.raises(PromptError, match="no prompt 'nope'"):
        load_prompt("nope")


def test_version_is_the_template_hash_not_the_filled_text():
    a = load_prompt("answer_style", question="A", facts="1")
    b = load_prompt("answer_style", question="B", facts="2")
    assert a.version == b.version
    assert a.version != load_prompt("system").version


def test_set_version_changes_when_a_prompt_changes(monkeypatch):
    from shopsight import prompts
    before = prompt_set_version()
    real = prompts._template_text
    monkeypatch.setattr(prompts, "_template_text", lambda name: real(name) + ("!" if name == "refusal" else ""))
    assert prompt_set_version() != before


def test_system_prompt_is_short_and_fixed():
    # short for the llama.cpp prefix cache; no placeholders so every turn shares the prefix
    text = load_prompt("system").text
    assert len(text.split()) < 160 and "$" not in text
