"""Prompt templates as versioned text files, loaded with importlib.resources.

A template uses ``$name`` placeholders (``string.Template``), so JSON braces in the text need
no escaping. A missing variable raises :class:`PromptError`. A prompt's version is the short
hash of its text, and :func:`prompt_set_version` hashes all of them: every answer records it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from string import Template

PROMPT_NAMES: tuple[str, ...] = ("system", "answer_style", "explanation_style", "refusal", "privacy", "clarify", "help", "limit")


class PromptError(KeyError):
    """A prompt file is missing, or a template variable was not given."""

    def __str__(self) -> str:  # KeyError quotes its message; a user should read it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Prompt:
    """One prompt file: its name, text (placeholders filled) and version (hash of the template)."""

    name: str
    text: str
    version: str


def _template_text(name: str) -> str:
    try:
        return resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PromptError(f"no prompt '{name}': expected prompts/{name}.md (known: {', '.join(PROMPT_NAMES)})") from exc


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def load_prompt(name: str, **variables: object) -> Prompt:
    """Load ``prompts/<name>.md`` and fill its ``$placeholders``.

    Args:
        name: File stem, one of PROMPT_NAMES.
        **variables: Values for the template's placeholders; every placeholder must be given.

    Raises:
        PromptError: the file does not exist or a placeholder has no value.
    """
    raw = _template_text(name)
    try:
        text = Template(raw).substitute({k: str(v) for k, v in variables.items()})
    except KeyError as exc:
        raise PromptError(f"prompt '{name}' needs the variable ${exc.args[0]}, which was not given") from None
    except ValueError as exc:
        raise PromptError(f"prompt '{name}' has a malformed placeholder: {exc}") from None
    return Prompt(name=name, text=text.strip(), version=_hash(raw))


def prompt_set_version() -> str:
    """One version for all prompts together: changes whenever any prompt file changes."""
    return _hash("\n".join(f"{n}:{_hash(_template_text(n))}" for n in PROMPT_NAMES))

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)
