"""The tool registry: each tool declared once, in its own module, with what the rest of the system needs.

A tool module under ``tools/`` defines ``TOOL = ToolSpec(...)``: the typed function the LLM may
call, how its result renders as text, which facts of its result an answer must state, the
router labels that lead to it (with example questions and how the arguments are filled), and
how a follow-up repeats it. The router, the guard, the renderer, the eval oracle and the MCP
server loop over :class:`Registry`; none of them names a tool. docs/adr/0005 has the recipe.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 2400  # a result is context for a small model: keep it bounded
# Keys a tool keeps in its result for people and programs reading all of it (`shopsight ask --json`),
# never sent to a model: the SQL a query ran, for one. They are audit data, not facts to phrase.
HIDDEN_KEYS = frozenset({"sql"})
ToolFunction = Callable[..., dict[str, Any]]


# --- what a question names, and what a conversation remembers ------------------------------------
@dataclass
class Entities:
    """What a question names: ids, a date range, filters, a limit, an ordinal."""

    user_ids: list[str] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)
    since: str | None = None
    until: str | None = None
    category: str | None = None
    country: str | None = None
    device: str | None = None
    limit: int | None = None
    ordinal: int | None = None
    purchased: bool | None = None

    def filters(self, *names: str) -> dict[str, Any]:
        """The named filters the question sets (None and unset ones left out)."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class ConversationState:
    """What follow-ups refer to: the last user(s), order, ranking, score and repeatable call."""

    last_user_ids: list[str] = field(default_factory=list)
    last_order_id: str | None = None
    last_ranked: list[str] = field(default_factory=list)
    last_metric: str | None = None
    last_call: dict[str, Any] | None = None  # {"name", "args"}

    def ranked_at(self, ordinal: int | None) -> str:
        """The user at 1-based position ``ordinal`` of the last ranking (-1: the last; None: the first)."""
        n = ordinal or 1
        return self.last_ranked[-1 if n == -1 else min(n, len(self.last_ranked)) - 1]

    def user(self, ent: Entities) -> str | None:
        """The user a question is about: the one it names, else the conversation's last one."""
        if ent.user_ids:
            return ent.user_ids[0]
        return self.last_user_ids[0] if self.last_user_ids else None


# --- key facts: what an answer must state ---------------------------------------------------------
@dataclass(frozen=True)
class KeyFact:
    """A fact an answer must state: ``what`` names it (in a rewrite request), ``holds`` checks a text."""

    what: str
    holds: Callable[[str], bool]


def need_id(value: Any, what: str) -> list[KeyFact]:
    """The identifier ``value`` must appear (case-insensitive); nothing is needed for an empty value."""
    if not value:
        return []
    text = str(value).lower()
    return [KeyFact(f"{what} {value}", lambda answer: text in answer.lower())]


def need_number(value: Any, what: str) -> list[KeyFact]:
    """The number ``value`` must be shown with its meaning intact (see :func:`tools.numbers.shows`)."""
    from shopsight.tools.numbers import shows

    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    return [KeyFact(f"{what} {value}", lambda answer: shows(answer, float(value)))]


def need_phrase(pattern: re.Pattern[str], what: str) -> list[KeyFact]:
    return [KeyFact(what, lambda answer: bool(pattern.search(answer)))]


NO_SUCH = re.compile(r"\b(no such|not found|does not exist|doesn't exist|unknown|no user|no order|no record"
                     r"|(?:could not|couldn't|cannot|can't|can not) find)\b", re.I)


# --- routes: how the router reaches a tool ----------------------------------------------------
ArgsBuilder = Callable[[Entities, ConversationState, str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Route:
    """A router label that leads to a tool.

    Args:
        label: The classifier label (unique across the registry).
        examples: Question templates the router is trained on ({u} user, {u2} second user,
            {o} order, {c} category, {t} time phrase, {n} number, {q} search words, {d} device).
        args: Fills the call's arguments from the question's entities and the conversation;
            None when it cannot (no user named): the router then asks which one.
        followups: Follow-up templates without an id ("and her risk?").
        per_user: The label asks about one user (it can be split from "churn and risk for u1",
            and "the second one" of a ranking can be its subject).
        takes_order: An order id can be its subject.
        metric: The score the label asks about ("churn" for "top_churn"), for "the second one".
        claims: (other label, wording): a question classified as the other label but worded
            like this comes here instead ("what share of sessions…" is a segment, not a search).
        select_words: For "tell me about the first one": the words that pick this label.
        select_default: The label "the first one" gets when no words pick another.
        many_users: The label takes several users ("compare u1 and u2").
        of_ranked: Wording that asks a measure of the last ranking's users ("how many of those are
            on mobile?"): after a ranking, such a question goes to this label with every ranked user.
        one_user: The label a question of this label goes to when it names exactly one user and
            no order ("the average order value of u00218" is that user's profile, not the shop's).
        over_period: Wording that brings a question of the ``one_user`` label back to this one when
            it also names a period: the profile has no period, so "how much did u00218 spend in
            March?" is this label's measure, for that user, over March.
    """

    label: str
    examples: tuple[str, ...]
    args: ArgsBuilder
    followups: tuple[str, ...] = ()
    per_user: bool = False
    takes_order: bool = False
    metric: str | None = None
    claims: tuple[tuple[str, re.Pattern[str]], ...] = ()
    select_words: re.Pattern[str] | None = None
    select_default: bool = False
    many_users: bool = False
    one_user: str | None = None
    over_period: re.Pattern[str] | None = None
    of_ranked: re.Pattern[str] | None = None


def user_args(ent: Entities, state: ConversationState, question: str) -> dict[str, Any] | None:
    """The common case: the one user the question (or the conversation) is about."""
    user = state.user(ent)
    return {"user_id": user} if user else None


# --- the spec ----------------------------------------------------------------------------------
Renderer = Callable[[Mapping[str, Any], Mapping[str, Any]], str]
FactRule = Callable[[Mapping[str, Any], Mapping[str, Any], str], list[KeyFact]]
Remember = Callable[[Mapping[str, Any], Mapping[str, Any], ConversationState], None]


def _no_facts(args: Mapping[str, Any], result: Mapping[str, Any], question: str) -> list[KeyFact]:
    return []


@dataclass(frozen=True)
class ToolSpec:
    """One tool and everything the system knows about it.

    Args:
        func: The typed, read-only tool function; its first parameter is the hidden context,
            its docstring is what an LLM reads (first line: the question it answers).
        render: (args, result) → a deterministic sentence or two (the answer of last resort,
            and the facts the writer rephrases).
        key_facts: (args, result, question) → the facts an answer must state.
        routes: The router labels that lead here.
        metric: The score this tool returns ("churn"), if it is one of the models.
        metric_words: Wording that names that score ("flight risk" → churn).
        repeatable: Arguments a follow-up that names only them may change ("and on desktop?").
        remember: (args, result, state) → update what follow-ups refer to; default: the user
            or order the call was about.
    """

    func: ToolFunction
    render: Renderer
    key_facts: FactRule = _no_facts
    routes: tuple[Route, ...] = ()
    metric: str | None = None
    metric_words: re.Pattern[str] | None = None
    repeatable: frozenset[str] = frozenset()
    remember: Remember | None = None

    @property
    def name(self) -> str:
        return self.func.__name__

    @property
    def summary(self) -> str:
        """The docstring's first line: which question the tool answers."""
        return (inspect.getdoc(self.func) or "").split("\n")[0]


# --- the registry -------------------------------------------------------------------------------
class RegistryError(ValueError):
    """Two tools share a name or a label, or a spec is malformed."""


class ToolArgumentError(ValueError):
    """An argument has the right type but a value the tool cannot use (an empty date range, say).

    Raised inside a tool; :meth:`Registry.run` turns it into an error result the model can act on.
    """


class Registry:
    """The tools, in a fixed order, with lookups by name, label and metric."""

    def __init__(self, specs: Iterable[ToolSpec]) -> None:
        self.specs: tuple[ToolSpec, ...] = tuple(specs)
        self._by_name: dict[str, ToolSpec] = {}
        self._routes: dict[str, tuple[Route, ToolSpec]] = {}
        for spec in self.specs:
            if spec.name in self._by_name:
                raise RegistryError(f"two tools are named {spec.name!r}")
            if not inspect.getdoc(spec.func):
                raise RegistryError(f"tool {spec.name} has no docstring: the LLM reads it to choose the tool")
            self._by_name[spec.name] = spec
            for route in spec.routes:
                if route.label in self._routes:
                    raise RegistryError(f"router label {route.label!r} leads to both {self._routes[route.label][1].name} and {spec.name}")
                self._routes[route.label] = (route, spec)

    # lookups ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> ToolSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tool '{name}' (tools: {', '.join(self.names)})") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def routes(self) -> list[tuple[Route, ToolSpec]]:
        return list(self._routes.values())

    def route(self, label: str) -> tuple[Route, ToolSpec] | None:
        return self._routes.get(label)

    def for_metric(self, metric: str) -> ToolSpec | None:
        """The tool that returns one user's ``metric`` score (predict_churn for "churn")."""
        return next((s for s in self.specs if s.metric == metric), None)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(s.metric for s in self.specs if s.metric)

    # running ------------------------------------------------------------------------------
    def run(self, ctx: Any, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run one tool; what the model got wrong (unknown tool, bad arguments) comes back as a result.

        Arguments are validated against the function's type hints (``"5"`` becomes 5; a value
        outside a ``Literal`` is refused with the allowed ones). An unexpected exception below
        the tool is logged with its traceback and reported as an error result (re-raised with
        ``ctx.raise_errors``), never hidden.
        """
        from pydantic import ValidationError

        if name not in self._by_name:
            return {"error": f"no tool named {name!r}", "hint": f"the tools are: {', '.join(self.names)}"}
        spec = self._by_name[name]
        try:
            given = _arguments_model(spec.func).model_validate(dict(args or {}))
        except ValidationError as exc:
            return {"error": f"bad arguments for {name}: {_describe(exc)}", "hint": spec.summary}
        try:
            return spec.func(ctx, **given.model_dump(exclude_unset=True))
        except ToolArgumentError as exc:  # a value of the right type that the tool still cannot use
            return {"error": f"bad arguments for {name}: {exc}", "hint": spec.summary}
        except Exception as exc:  # a bug below the tool: logged in full, reported, not hidden
            if getattr(ctx, "raise_errors", False):
                raise
            log.exception("tool %s failed with %s", name, dict(args or {}))
            return {"error": f"{name} failed", "detail": f"{type(exc).__name__}: {exc}"[:300],
                    "hint": "this is a bug in ShopSight, not in the question; set SHOPSIGHT_RAISE_ERRORS=1 to see it"}

    # what the rest of the system asks of a result ---------------------------------------------
    def render(self, name: str, args: Mapping[str, Any], result: Mapping[str, Any]) -> str:
        """The deterministic text of one call's result (errors rendered alike for every tool)."""
        if "error" in result:
            return render_error(result)
        if name not in self._by_name:
            return json.dumps(result, default=str)[:400]
        return self._by_name[name].render(args, result)

    def key_facts(self, name: str, args: Mapping[str, Any], result: Mapping[str, Any], question: str) -> list[KeyFact]:
        """The facts an answer using this call must state (an error: the error and the id)."""
        if "error" in result:
            facts = need_id(result.get("user_id") or result.get("order_id"), "the unknown id")
            allowed = [str(v) for v in result.get("allowed") or []]
            if allowed:  # "no such category": the answer lists what there is (most of it), not a cut-off "…are:"
                facts.append(KeyFact(f"the values there are ({', '.join(allowed[:3])}, …)",
                                     lambda a: sum(v.lower() in a.lower() for v in allowed) >= (len(allowed) + 1) // 2))
            return facts + need_phrase(NO_SUCH, f"the error ({result['error']})")
        if name not in self._by_name:
            return []
        return self._by_name[name].key_facts(args, result, question)

    def remember(self, calls: Sequence[Any]) -> ConversationState:
        """Fold a conversation's tool calls (oldest first; each with name, args, result) into follow-up state."""
        state = ConversationState()
        for c in calls:
            spec = self._by_name.get(c.name)
            if spec is None:
                continue
            (spec.remember or _remember_subject(spec))(c.args or {}, c.result or {}, state)
        return state

    def langchain_tools(self, ctx: Any) -> list[Any]:
        """Every tool as a LangChain StructuredTool with ``ctx`` bound and hidden from the model."""
        from langchain_core.tools import StructuredTool

        return [StructuredTool.from_function(_bound(spec, ctx, self), name=spec.name, parse_docstring=True,
                                             error_on_invalid_docstring=False) for spec in self.specs]

    def arguments_schema(self, name: str) -> dict[str, Any]:
        """The JSON schema of the arguments :meth:`run` validates a call of ``name`` against (for MCP clients)."""
        return _arguments_model(self.get(name).func).model_json_schema()

    def schemas(self) -> list[dict[str, Any]]:
        """Each tool's name, description and JSON schema of its arguments (what a client model sees)."""
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return [convert_to_openai_tool(t)["function"] for t in self.langchain_tools(ctx=None)]


def _remember_subject(spec: ToolSpec) -> Remember:
    def remember(args: Mapping[str, Any], result: Mapping[str, Any], state: ConversationState) -> None:
        if args.get("order_id"):
            state.last_order_id = str(args["order_id"])
            state.last_user_ids = []
            state.last_call = {"name": spec.name, "args": dict(args)}
        elif args.get("user_id"):
            state.last_user_ids = [str(args["user_id"])]
            state.last_order_id = None
            state.last_call = {"name": spec.name, "args": dict(args)}
            if spec.metric:
                state.last_metric = spec.metric

    return remember


def render_error(result: Mapping[str, Any]) -> str:
    """An error in words for the analyst: what was not found, what ids look like, what was probably meant."""
    error = str(result["error"])
    if error in ("no such user", "no such order"):
        kind = error.split()[-1]
        who = result.get("user_id") if kind == "user" else result.get("order_id")
        text = f"There is no such {kind}: {who}."
        if result.get("did_you_mean"):
            text += f" Did you mean {' or '.join(result['did_you_mean'])}?"
        elif result.get("example_id"):
            total = result.get("n_users") if kind == "user" else result.get("n_orders")
            text += f" This workspace's {kind} ids look like {result['example_id']}" + (
                f" ({total:,} {kind}s)." if isinstance(total, int) else ".")
        return text
    who = result.get("user_id") or result.get("order_id") or ""
    return f"{error[:1].upper() + error[1:]}{': ' + str(who) if who else ''}. {result.get('hint', '')}".strip()


def result_json(result: Mapping[str, Any]) -> str:
    """A tool result as a model sees it: compact JSON without the :data:`HIDDEN_KEYS`, cut to
    MAX_RESULT_CHARS by dropping list tails if needed."""
    result = {k: v for k, v in result.items() if k not in HIDDEN_KEYS}
    text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)
    if len(text) <= MAX_RESULT_CHARS:
        return text
    trimmed = dict(result)
    for key in ("sessions", "users", "evidence", "factors", "rows", "items"):
        while isinstance(trimmed.get(key), list) and len(trimmed[key]) > 1:
            trimmed[key] = trimmed[key][:-1]
            trimmed["truncated"] = True
            text = json.dumps(trimmed, ensure_ascii=False, separators=(",", ":"), default=str)
            if len(text) <= MAX_RESULT_CHARS:
                return text
    return text[:MAX_RESULT_CHARS]


@functools.cache
def _arguments_model(func: ToolFunction) -> type[Any]:
    """A pydantic model of a tool's model-facing parameters (all but the hidden context)."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(func)
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(func).parameters.values())[1:]:
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(f"{func.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def _describe(error: Any) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e["loc"]) or "arguments"
        parts.append(f"{where}: {e['msg']}" + (f" (got {e['input']!r})" if e.get("type") != "missing" else ""))
    return "; ".join(parts)[:400]


def _bound(spec: ToolSpec, ctx: Any, registry: Registry) -> Callable[..., str]:
    """The tool as a function of its model-facing arguments only, returning bounded JSON text."""
    func = spec.func
    hints = typing.get_type_hints(func)  # resolved: the wrapper lives in another module's globals
    sig = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in list(sig.parameters.values())[1:]]

    def run(**kwargs: Any) -> str:
        return result_json(registry.run(ctx, spec.name, kwargs))

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    run.__signature__ = sig.replace(parameters=params, return_annotation=str)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params} | {"return": str}
    return run
