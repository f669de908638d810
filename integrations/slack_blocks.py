"""Block Kit messages for the Slack app: the answer, its evidence, failures and refusals.

Pure functions from values to Slack message payloads, so every message can be checked
without Slack. Limits from Block Kit: a section's text holds at most 3,000 characters,
a context block at most 10 elements, a message at most 50 blocks.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

SECTION_LIMIT = 3000
MAX_ANSWER_SECTIONS = 8
MAX_CITED = 12
FALLBACK_LIMIT = 300

LOOKING_INTO_IT = ":mag: Looking into it…"
REFUSAL = (
    "Sorry, I can only answer in the channels and for the people my administrators have allowed. "
    "Please ask in an allowed channel, or ask an admin to add you."
)
EMPTY_QUESTION = (
    "Ask me about your shop's users, for example: _why is user u00042 likely to churn?_, "
    "_which users look like fraud this week?_ or _what did u00007 do last week?_"
)


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack reserves for links and mentions (&, <, >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(markdown: str) -> str:
    """Turn the common Markdown an LLM writes into Slack mrkdwn (bold, headings, links), escaped."""
    text = escape_mrkdwn(markdown)
    text = re.sub(r"\*\*(.+?)\*\*", r"*\1*", text)
    text = re.sub(r"^#{1,6}\s*(.+)$", r"*\1*", text, flags=re.MULTILINE)
    text = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r"<\2|\1>", text)
    return text


def _chunks(text: str, size: int) -> list[str]:
    """Split at paragraph or line breaks where possible, never inside Slack's size limit."""
    chunks: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n\n", 0, size), text.rfind("\n", 0, size))
        cut = cut if cut > size // 2 else size
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip("\n")
    if text.strip():
        chunks.append(text)
    return chunks


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def fallback_text(answer: str) -> str:
    """The plain text Slack shows in notifications and to screen readers (the answer's start)."""
    one_line = " ".join(answer.split())
    return one_line if len(one_line) <= FALLBACK_LIMIT else one_line[: FALLBACK_LIMIT - 1] + "…"


def answer_blocks(
    answer: str,
    *,
    citations: Sequence[str] = (),
    model_versions: Mapping[str, str] | None = None,
    backend: str | None = None,
    model: str | None = None,
    prompt_version: str | None = None,
    latency_s: float | None = None,
) -> list[dict[str, Any]]:
    """The blocks of an answer: its text, the sessions it cites, and what produced it.

    Args:
        answer: The agent's answer (Markdown or plain text; already masked by the agent).
        citations: Session ids the answer cites.
        model_versions: Trained model name → version used for the answer.
        backend: The LLM backend (e.g. "local", "openai").
        model: The LLM's name.
        prompt_version: The prompt template's version (hash).
        latency_s: Seconds the agent took.
    """
    sections = _chunks(to_mrkdwn(answer.strip() or "(the agent returned an empty answer)"), SECTION_LIMIT)
    if len(sections) > MAX_ANSWER_SECTIONS:
        sections = sections[:MAX_ANSWER_SECTIONS]
        sections[-1] = sections[-1][: SECTION_LIMIT - 40] + "\n_…answer cut to fit in Slack._"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections]
    if citations:
        shown = ", ".join(f"`{escape_mrkdwn(c)}`" for c in citations[:MAX_CITED])
        more = f" and {len(citations) - MAX_CITED} more" if len(citations) > MAX_CITED else ""
        blocks.append(_context(f":card_index_dividers: Sessions cited: {shown}{more}"))
    provenance = []
    if model_versions:
        models = ", ".join(f"{escape_mrkdwn(k)} `{escape_mrkdwn(v)}`" for k, v in sorted(model_versions.items()))
        provenance.append(f"Models: {models}")
    llm = " ".join(escape_mrkdwn(p) for p in (backend, model) if p)
    if llm:
        provenance.append(f"LLM: {llm}")
    if prompt_version:
        provenance.append(f"prompt `{escape_mrkdwn(prompt_version)}`")
    if latency_s is not None:
        provenance.append(f"{latency_s:.1f} s")
    if provenance:
        blocks.append(_context(" · ".join(provenance)))
    return blocks


def failure_blocks(error: BaseException) -> list[dict[str, Any]]:
    """What the thread shows when the agent failed: what went wrong and what to try."""
    detail = " ".join(str(error).split())[:500] or "no details"
    return [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": f":warning: I could not answer this: *{type(error).__name__}*: {escape_mrkdwn(detail)}",
            },
        },
        _context("The error is in the bot's log with its traceback. Ask again in a moment, or tell the bot's admin."),
    ]


def failure_text(error: BaseException) -> str:
    """The notification text for a failure (the first line of :func:`failure_blocks`)."""
    return f"I could not answer this: {type(error).__name__}"


def chart_failure_text(error_code: str) -> str:
    """A note for the thread when a chart could not be uploaded (usually a missing scope)."""
    hint = " The app needs the `files:write` scope: reinstall it from integrations/slack_manifest.yaml." if (
        "scope" in error_code
    ) else ""
    return f":bar_chart: The chart could not be uploaded ({escape_mrkdwn(error_code)}).{hint}"


def refused_answer_text(error_code: str) -> str:
    """What replaces the placeholder when Slack refuses the answer message itself."""
    return (
        f":warning: I found an answer but Slack refused to show it ({escape_mrkdwn(error_code)}). "
        "The error is in the bot's log; please tell the bot's admin."
    )
