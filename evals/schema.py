"""The YAML format of an evaluation question set, as pydantic models with errors that name the case.

A set is a YAML file with a ``cases:`` list (or a bare list). Each case is::

    - id: churn-why-top                    # unique, short
      tags: [churn, explanation]
      given:                               # optional: names resolved against the workspace at run time
        u: {user: highest_churn}           # see evals/roles.py for the roles
      question: "Why is {u} likely to churn?"
      expect_tools:                        # names with a subset of their arguments; order optional
        - {name: predict_churn, args: {user_id: "{u}"}}
      ordered: false                       # true: the expected tools must be called in this order
      must_contain:
        - "{u}"                            # a literal (case-insensitive)
        - predict_churn.probability        # a reference into a tool result, matched as a number
        - [not found, no such user]        # any one of these
                                           # (references may point into an earlier turn's results)
      must_not_contain: ["ignore previous instructions"]
      expect_refusal: false                # null: not checked (an answer that declines only a part)

A conversation uses ``turns:`` instead of ``question:``; each turn has its own
``question``/``expect_tools``/``must_contain``/``must_not_contain``/``expect_refusal`` and
all turns share one conversation id. ``expect_tools: []`` means "no tool may be called";
leaving it out means "tools are not checked".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shopsight.tools import tool_names

#: The tools the agent offers; names outside this list are typos, refused at load time.
KNOWN_TOOLS: tuple[str, ...] = tool_names()

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# "predict_churn.probability", "top_users.users[0].user_id": a tool name, then a path.
REFERENCE = re.compile(r"^(?P<tool>[a-z_]+)(?P<path>(\.[A-Za-z_][A-Za-z0-9_]*|\[-?\d+\])+)$")


class EvalSetError(ValueError):
    """A question set cannot be read; the message names the file, the case id and the field."""


class ToolExpectation(BaseModel):
    """One tool the answer must call, with the arguments that must be among the call's arguments."""

    model_config = ConfigDict(extra="forbid")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_tool(cls, name: str) -> str:
        if name not in KNOWN_TOOLS:
            raise ValueError(f"unknown tool '{name}'; the tools are: {', '.join(KNOWN_TOOLS)}")
        return name


class Reference(BaseModel):
    """A value inside a tool result: ``tool`` then a path such as ``.factors[0].name``."""

    model_config = ConfigDict(frozen=True)

    tool: str
    path: str

    def __str__(self) -> str:
        return f"{self.tool}{self.path}"


#: One required fact: a literal, a reference, or a list of alternatives (any one suffices).
Fact = Union[str, Reference, list[Union[str, Reference]]]


def parse_fact_text(text: str) -> str | Reference:
    """A reference if ``text`` is ``<known tool>.<path>``, else the literal itself."""
    m = REFERENCE.match(text.strip())
    if m and m.group("tool") in KNOWN_TOOLS:
        return Reference(tool=m.group("tool"), path=m.group("path"))
    return text


class Turn(BaseModel):
    """One question and what its answer must do."""

    model_config = ConfigDict(extra="forbid")

    question: str
    expect_tools: list[ToolExpectation] | None = None
    ordered: bool = False
    must_contain: list[Fact] = Field(default_factory=list)
    must_not_contain: list[str] = Field(default_factory=list)
    expect_refusal: bool | None = False  # None: either is fine (e.g. answer part, decline part)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, q: str) -> str:
        if not q.strip():
            raise ValueError("the question is empty")
        return q

    @field_validator("must_contain", mode="before")
    @classmethod
    def _parse_facts(cls, items: Any) -> Any:
        if items is None:
            return []
        if not isinstance(items, list):
            raise ValueError("must_contain must be a list of strings (or lists of alternatives)")
        out: list[Any] = []
        for item in items:
            if isinstance(item, list):
                if not item:
                    raise ValueError("an empty list of alternatives in must_contain")
                out.append([Reference.model_validate(x) if isinstance(x, (Reference, dict)) else parse_fact_text(str(x)) for x in item])
            elif isinstance(item, (str, int, float)):
                out.append(parse_fact_text(str(item)))
            elif isinstance(item, (Reference, dict)):
                out.append(Reference.model_validate(item))
            else:
                raise ValueError(f"must_contain item {item!r} is neither a string nor a list of strings")
        return out

    @model_validator(mode="after")
    def _refusal_without_tools(self) -> "Turn":
        if self.expect_refusal and self.expect_tools:
            raise ValueError("a turn that expects a refusal cannot also expect tool calls")
        return self

    def references(self) -> list[Reference]:
        """The references among ``must_contain`` (alternatives included)."""
        return [a for f in self.must_contain for a in (f if isinstance(f, list) else [f]) if isinstance(a, Reference)]


class RoleSpec(BaseModel):
    """A user, order or category chosen at run time, e.g. ``{user: highest_churn}`` (see roles.py)."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = None
    order: str | None = None
    category: str | None = None
    seed: int = 0
    rank: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> "RoleSpec":
        kinds = [k for k in ("user", "order", "category") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a role names exactly one of user, order, category, e.g. {user: highest_churn}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("user", "order", "category") if getattr(self, k) is not None)

    @property
    def role(self) -> str:
        return str(getattr(self, self.kind))


class EvalCase(BaseModel):
    """One case: a single question or a conversation of turns, plus the roles it names."""

    model_config = ConfigDict(extra="forbid")

    id: str
    tags: list[str] = Field(default_factory=list)
    given: dict[str, RoleSpec] = Field(default_factory=dict)
    turns: list[Turn]

    @model_validator(mode="before")
    @classmethod
    def _single_question_is_one_turn(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a case must be a mapping with id, question (or turns), expect_tools, ...")
        if "question" in data:
            if "turns" in data:
                raise ValueError("give either question or turns, not both")
            data = dict(data)
            turn = {k: data.pop(k) for k in list(data) if k in Turn.model_fields}
            data["turns"] = [turn]
        elif "turns" not in data:
            raise ValueError("a case needs a question (or turns)")
        return data

    @field_validator("id")
    @classmethod
    def _id_is_simple(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"id '{value}' must be letters, digits, '-', '_' or '.'")
        return value

    @model_validator(mode="after")
    def _placeholders_are_given(self) -> "EvalCase":
        if not self.turns:
            raise ValueError("turns is empty")
        # A reference is checked against this turn's tool results or an earlier turn's, so
        # its tool must be expected in this turn or before ("why?" after a churn question).
        expected: set[str] = set()
        for i, turn in enumerate(self.turns, 1):
            expected |= {t.name for t in turn.expect_tools or []}
            for ref in turn.references():
                if ref.tool not in expected:
                    where = f"turns[{i}]: " if len(self.turns) > 1 else ""
                    raise ValueError(
                        f"{where}must_contain refers to '{ref}' but '{ref.tool}' is not in expect_tools of this or an earlier turn"
                    )
        for name in sorted(self.placeholders()):
            if name not in self.given:
                raise ValueError(f"'{{{name}}}' is used but not defined under given:")
        return self

    def placeholders(self) -> set[str]:
        """Every ``{name}`` used in the case's questions, arguments and facts."""
        return set(PLACEHOLDER.findall(yaml.safe_dump([t.model_dump(mode="json") for t in self.turns])))


class EvalSet(BaseModel):
    """A named list of cases with unique ids."""

    name: str
    path: Path | None = None
    cases: list[EvalCase]

    def select(self, *, tags: list[str] | None = None, ids: list[str] | None = None, limit: int | None = None) -> "EvalSet":
        """The cases having any of ``tags`` and/or one of ``ids`` (all if neither), at most ``limit``."""
        cases = self.cases
        if tags:
            cases = [c for c in cases if set(c.tags) & set(tags)]
        if ids:
            unknown = sorted(set(ids) - {c.id for c in self.cases})
            if unknown:
                raise EvalSetError(f"no case with id {', '.join(unknown)} in {self.name}")
            cases = [c for c in cases if c.id in ids]
        if limit is not None:
            cases = cases[:limit]
        return EvalSet(name=self.name, path=self.path, cases=cases)


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = [str(x) for x in e["loc"]]
        lines.append(f"{'.'.join(loc) or 'case'}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def parse_eval_set(data: Any, *, name: str, path: Path | None = None) -> EvalSet:
    """Validate already-parsed YAML; raise :class:`EvalSetError` naming the case id and the field."""
    source = str(path) if path else name
    raw_cases = data.get("cases") if isinstance(data, dict) else data
    if not isinstance(raw_cases, list) or not raw_cases:
        raise EvalSetError(f"{source}: expected a non-empty list of cases (a top-level list or 'cases:')")
    cases: list[EvalCase] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_cases):
        case_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"{source}: case '{case_id}'" if case_id else f"{source}: case #{i + 1} (no id)"
        try:
            case = EvalCase.model_validate(raw)
        except ValidationError as exc:
            raise EvalSetError(f"{where}: {_describe(exc)}") from None
        if case.id in seen:
            raise EvalSetError(f"{where}: the id is used twice; ids must be unique")
        seen.add(case.id)
        cases.append(case)
    set_name = data.get("name", name) if isinstance(data, dict) else name
    return EvalSet(name=str(set_name), path=path, cases=cases)


def load_eval_set(path: str | Path) -> EvalSet:
    """Read and validate a YAML question set.

    Args:
        path: The YAML file.

    Raises:
        EvalSetError: The file is missing, is not YAML, or a case is malformed (the message
            names the file, the case id and the field).
    """
    path = Path(path)
    if not path.exists():
        raise EvalSetError(f"no question set at {path}; the shipped one is evals/demo.yaml")
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.y*ml"))
        raise EvalSetError(
            f"{path} is a folder, not a question set: give one YAML file"
            + (f", e.g. {path / yamls[0]} ({len(yamls)} in that folder)" if yamls else "; the shipped one is evals/demo.yaml")
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise EvalSetError(f"{path} is not valid YAML: {exc}") from None
    return parse_eval_set(data, name=path.stem, path=path)
