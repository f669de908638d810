"""The one agent loop, for every backend: read :meth:`Agent.ask` top to bottom.

plan → run the tool calls → write → guard → (one rewrite) → fallback → mask → cite → store.

Each step is a plain function with typed inputs and outputs. The state of one question lives
in local variables of ``ask`` (and the :class:`Answer` it returns), never on the shared
``Agent``: one agent answers concurrent questions safely (Slack asks from a thread pool).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

from shopsight.agent.backends import BackendError, NoWriter, TokenCallback, Writer
from shopsight.agent.guard import GroundingVerdict, check_grounding, citations, render_answer, with_citations
from shopsight.agent.memory import ConversationStore
from shopsight.agent.planner import Planner, PlanStep
from shopsight.agent.settings import Settings
from shopsight.agent.types import Answer, CallRequest, GuardReport, PlanInfo, Timings, ToolCall, Usage
from shopsight.behavior.models.registry import stale_note
from shopsight.behavior.privacy import mask_pii
from shopsight.prompts import load_prompt, prompt_set_version
from shopsight.tools import ToolContext
from shopsight.tools.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["Agent", "Answer", "build_agent"]


class Agent:
    """Answers questions about one workspace: a planner chooses tools, a writer phrases, the guard checks.

    Args:
        settings: The configuration (max steps, …).
        ctx: The tools' context on the workspace.
        planner: Chooses the tool calls (:class:`agent.planner.RouterPlanner` or ``ToolCallingPlanner``).
        writer: Phrases the answer from the facts (:mod:`agent.backends`); ``NoWriter`` for none.
        registry: The tools (default: every module of ``tools/``).
        store: Where conversations are kept (default: the workspace's).
        backend, model: What answers record as their backend and model.
    """

    def __init__(self, settings: Settings, ctx: ToolContext, planner: Planner, writer: Writer, *,
                 registry: Registry | None = None, store: ConversationStore | None = None,
                 backend: str | None = None, model: str | None = None) -> None:
        from shopsight.tools import default_registry

        self.settings = settings
        self.ctx = ctx
        self.planner = planner
        self.writer = writer
        self.registry = registry or default_registry()
        self.store = store or ConversationStore.for_workspace(ctx.workspace)
        self.backend = backend or settings.backend
        self.model = model or settings.model_label
        self.system_prompt = load_prompt("system").text
        self.prompt_version = prompt_set_version()

    @property
    def router_version(self) -> str | None:
        return self.planner.version

    def ask(self, question: str, conversation_id: str | None = None, on_token: TokenCallback | None = None) -> Answer:
        """Answer ``question`` within ``conversation_id`` (created if new; default: a new one).

        Args:
            question: The analyst's question.
            conversation_id: Continue this conversation (follow-ups see its earlier answers).
            on_token: Called with each streamed piece of the draft (a front end replaces the
                streamed text in place if the guard changes the answer).
        """
        t0 = time.perf_counter()
        question = question.strip()
        if not question:
            raise ValueError("the question is empty: ask something, e.g. \"top 10 users by churn\"")
        # personal data the analyst typed never reaches a planner, an LLM or the store: an e-mail that is
        # a user's id becomes that user's pseudonym (as ingest stored it), anything else is masked
        question = protect_question(question, self.ctx)
        cid = self.store.new_conversation(self.backend, self.model, conversation_id)
        history = self.store.answers(cid) if conversation_id else []
        first_token: list[float] = []

        def timed(text: str) -> None:
            if not first_token:
                first_token.append(time.perf_counter() - t0)
            on_token(text)  # type: ignore[misc]

        stream = timed if on_token else None

        # 1-2. plan and run the tool calls (a native planner may take several steps)
        planned = plan_and_run(self.planner, self.registry, self.ctx, question, history, self.settings.max_steps, stream)
        calls, usage = planned.calls, planned.usage
        t_tools = time.perf_counter()
        if planned.final.kind != "answer":  # a fixed text (help, refusal, clarifying question): no data, no guard
            return self._finish(question, cid, planned.final.text or "", planned, GuardReport(), None, usage, t0, first_token,
                                kind=planned.final.kind)
        # 3. write (unless the planner already drafted the answer)
        draft = planned.final.text
        if draft is None or isinstance(self.writer, NoWriter):
            written = write_draft(self.writer, self.system_prompt, question, calls, self.registry, stream=stream)
            draft, usage = written.text, usage + written.usage
        t_write = time.perf_counter()
        # 4-5. guard, one rewrite, fallback
        answer, guard, rewrite_usage = guard_draft(draft, calls, question, self.system_prompt, self.registry, self.writer,
                                                   vocabulary=self.ctx.vocabulary())
        usage += rewrite_usage
        t_guard = time.perf_counter()
        # 6. mask: the tools mask personal data; a writer must not invent any either
        masked = mask_pii(answer)
        if masked != answer:
            answer, guard = masked, replace(guard, masked_personal_data=True)
        timings = (planned.plan_s, t_tools, t_write, t_guard)
        return self._finish(question, cid, answer, planned, guard, draft, usage, t0, first_token, timings=timings)

    def _finish(self, question: str, cid: str, text: str, planned: "Planned", guard: GuardReport, draft: str | None,
                usage: Usage, t0: float, first_token: list[float], *, kind: str = "answer",
                timings: tuple[float, float, float, float] | None = None) -> Answer:
        # 7. cite: the sessions and model versions of the tool results, appended when not mentioned
        cites = citations(planned.calls)
        if kind == "answer":
            text = with_citations(text, cites)
            # a model trained before the newest batches says so, in one line per model
            notes = [n for n in (stale_note(self.ctx.workspace, m, self.ctx.get_events()["ts"]) for m in cites.models) if n]
            if notes:
                text = f"{text.rstrip()}\n" + " ".join(notes)
        end = time.perf_counter()
        plan_s, t_tools, t_write, t_guard = timings or (planned.plan_s, end, end, end)
        answer = Answer(
            question=question, answer=text, conversation_id=cid, kind=kind,  # type: ignore[arg-type]
            tool_calls=tuple(planned.calls), citations=cites, backend=self.backend, model=self.model,
            prompt_version=self.prompt_version,
            plan=PlanInfo(planner=self.planner.name, label=planned.first.label, confidence=planned.first.confidence,
                          steps=planned.steps, step_limit_hit=planned.limit_hit, version=self.planner.version),
            guard=guard,
            timings=Timings(plan_s=round(plan_s, 4), tools_s=round(planned.tools_s, 4),
                            write_s=round(max(t_write - t_tools, 0.0), 4), guard_s=round(max(t_guard - t_write, 0.0), 4),
                            total_s=round(end - t0, 4), first_token_s=round(first_token[0], 4) if first_token else None),
            usage=usage, draft=draft if draft is not None and draft != text.split(" (Sources:")[0] else None,
        )
        # 8. store
        self.store.append(answer)
        return answer


# --- the steps ----------------------------------------------------------------------------------
def protect_question(question: str, ctx: ToolContext) -> str:
    """The question with personal data replaced: by the user's pseudonym when it is one, else by a mask."""
    from shopsight.behavior.privacy import find_pii, pseudonym

    spans = find_pii(question)
    if not spans:
        return question
    key = ctx.privacy_key()
    out, last = [], 0
    for span in spans:
        raw = question[span.start:span.end]
        alias = pseudonym(raw, key) if key is not None else None
        out += [question[last:span.start], alias if alias and ctx.has_user(alias) else mask_pii(raw)]
        last = span.end
    return "".join(out) + question[last:]



@dataclass(frozen=True)
class Planned:
    """What planning and running the tools produced for one question."""

    calls: tuple[ToolCall, ...]
    first: PlanStep
    final: PlanStep
    steps: int
    limit_hit: bool
    usage: Usage
    plan_s: float
    tools_s: float


def plan_and_run(planner: Planner, registry: Registry, ctx: ToolContext, question: str, history: Sequence[Answer],
                 max_steps: int, on_token: TokenCallback | None = None) -> Planned:
    """Ask the planner for steps and run the calls it asks for, at most ``max_steps`` steps.

    A step without calls ends the loop. At the limit the loop stops even if the planner still
    asks for tools: the answer is then written from what has run.
    """
    calls: list[ToolCall] = []
    usage = Usage()
    plan_s = tools_s = 0.0
    first: PlanStep | None = None
    step = PlanStep()
    for n in range(max_steps):
        t0 = time.perf_counter()
        step = planner.step(question, history, calls, on_token)
        plan_s += time.perf_counter() - t0
        usage += step.usage
        first = first or step
        if step.done:
            return Planned(tuple(calls), first, step, n + 1, False, usage, plan_s, tools_s)
        t1 = time.perf_counter()
        calls += run_calls(registry, ctx, step.calls, step=n)
        tools_s += time.perf_counter() - t1
    log.warning("planner %s stopped after %d steps without a final answer", planner.name, max_steps)
    return Planned(tuple(calls), first or step, PlanStep(), max_steps, True, usage, plan_s, tools_s)


def run_calls(registry: Registry, ctx: ToolContext, requests: Sequence[CallRequest], *, step: int = 0) -> list[ToolCall]:
    """Run each requested call; bad arguments and unknown tools come back as error results."""
    out = []
    for r in requests:
        t0 = time.perf_counter()
        result = registry.run(ctx, r.name, r.args)
        out.append(ToolCall(r.name, dict(r.args), result, id=r.id, step=step, seconds=time.perf_counter() - t0))
    return out


def writer_messages(system: str, question: str, facts: str, note: str = "") -> list[dict[str, str]]:
    """The two short messages the writer sees: the fixed system prompt, then the facts and the question.

    The facts are the tool results rendered as plain sentences: a 135M model rephrases a
    sentence far better than it reads JSON, and the prompt is a third as long, which is most
    of the latency on two cores.
    """
    user = load_prompt("answer_style", question=question, facts=facts).text
    if any(w in question.lower() for w in ("why", "explain", "reason", "factor")):
        user += "\n" + load_prompt("explanation_style").text
    if note:
        user += "\n" + note
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Draft:
    text: str
    usage: Usage = Usage()


def write_draft(writer: Writer, system: str, question: str, calls: Sequence[ToolCall], registry: Registry, *,
                note: str = "", stream: TokenCallback | None = None) -> Draft:
    """The writer's draft from the rendered facts (with no tool results, there is nothing to phrase)."""
    if not calls or isinstance(writer, NoWriter):
        return Draft(render_answer(calls, registry) if calls else "")
    written = writer.write(writer_messages(system, question, render_answer(calls, registry), note), stream)
    return Draft(written.text, written.usage)


def guard_draft(draft: str, calls: Sequence[ToolCall], question: str, system_prompt: str, registry: Registry,
                writer: Writer, *, vocabulary: Sequence[str] = ()) -> tuple[str, GuardReport, Usage]:
    """Check the draft; ask for one rewrite if it fails; else replace it by the deterministic narrative."""
    verdict = check_grounding(draft, calls, question, system_prompt, registry, vocabulary)
    if verdict.leaked_prompt:
        return load_prompt("refusal").text, GuardReport(ok=False, replaced=True, leaked_prompt=True), Usage()
    if verdict.ok and (draft.strip() or not calls):
        return draft if draft.strip() else load_prompt("refusal").text, GuardReport(), Usage()
    note = rewrite_note(verdict)
    try:
        second = write_draft(writer, system_prompt, question, calls, registry, note=note)
    except BackendError as exc:  # the answer of last resort needs no LLM
        log.warning("rewrite failed: %s", exc)
        second = Draft("")
    again = check_grounding(second.text, calls, question, system_prompt, registry, vocabulary)
    report = GuardReport(ok=False, unsupported=tuple(verdict.unsupported), missing=tuple(verdict.missing),
                         problems=tuple(verdict.problems), rewritten=True)
    if again.ok and second.text.strip() and not again.leaked_prompt:
        return second.text, report, second.usage
    # with no tool results there is nothing to report: say what the agent can do
    fallback = render_answer(calls, registry) if calls else load_prompt("refusal").text
    return fallback, replace(report, replaced=True, unsupported_after_rewrite=tuple(again.unsupported)), second.usage


def rewrite_note(verdict: GroundingVerdict) -> str:
    problems = []
    if verdict.unsupported:
        problems.append(f"used numbers or ids that are not in the tool results ({', '.join(verdict.unsupported)})")
    if verdict.missing:
        problems.append(f"left out {', '.join(verdict.missing)}")
    if verdict.problems:
        problems.append(f"had {', '.join(verdict.problems)}")
    return (f"Your answer {' and '.join(problems) or 'was empty'}. "
            "Rewrite it: lead with the answer, use only the numbers, ids and dates in the facts, plain words, no field names.")


# --- building an agent from settings -----------------------------------------------------------
def build_agent(settings: Settings, workspace: Any, *, chat_model: Any = None, ctx: ToolContext | None = None,
                writer: Writer | None = None, registry: Registry | None = None) -> Agent:
    """The agent for ``settings`` on ``workspace``: checks the workspace, model file or server first.

    Nothing slow happens here: the router, MiniLM and the GGUF load on the first question that
    needs them.

    Args:
        chat_model: A LangChain chat model to plan with natively (tests pass a scripted one);
            it also writes the rewrite unless ``writer`` is given.

    Raises:
        WorkspaceError: the workspace has no events, or the router is not trained (local backend).
        BackendError: the model file is missing or the server does not answer.
    """
    from shopsight.agent.backends import ChatModelWriter, LlamaWriter, OpenAIWriter, check_server, hosted_chat_model
    from shopsight.agent.planner import RouterPlanner, ToolCallingPlanner
    from shopsight.tools import default_registry

    workspace.require_events()
    registry = registry or default_registry()
    ctx = ctx or ToolContext(workspace, chroma_url=settings.chroma_url, raise_errors=settings.raise_errors)
    system = load_prompt("system").text
    if chat_model is not None:
        planner: Planner = ToolCallingPlanner(chat_model, registry, ctx, system, settings)
        return Agent(settings, ctx, planner, writer or ChatModelWriter(chat_model), registry=registry,
                     backend="scripted" if settings.backend == "local" else settings.backend)
    if settings.backend == "openai":
        check_server(settings)
    if writer is None:
        if settings.writer_name == "none":
            writer = NoWriter()
        elif settings.writer_name == "openai":
            writer = OpenAIWriter(settings)
        else:
            local = LlamaWriter(settings)
            local.check()  # a missing model file fails now, before anything slow
            writer = local
    if settings.uses_router:
        from shopsight.agent.router import load_router

        load_router(workspace)  # an untrained router fails now, with the command to train it
        planner = RouterPlanner(lambda: make_router(ctx, registry), registry)
    else:
        if settings.backend != "openai":
            raise BackendError("native tool calling needs SHOPSIGHT_BACKEND=openai; the local model plans with the router")
        hosted = hosted_chat_model(settings)
        planner = ToolCallingPlanner(hosted, registry, ctx, system, settings)
        if settings.writer_name == "openai":
            writer = ChatModelWriter(hosted)
    return Agent(settings, ctx, planner, writer, registry=registry)


def make_router(ctx: ToolContext, registry: Registry) -> Any:
    """The workspace's trained router, with entity lists (categories, countries) from its events."""
    from shopsight.agent.router import Router, default_embedder, load_router

    classifier, version = load_router(ctx.workspace)
    events = ctx.get_events()
    categories = sorted(events["category"].dropna().astype(str).unique().tolist())
    catalogue = ctx.workspace.load_catalogue()
    if catalogue is not None and "category" in catalogue.columns:
        categories = sorted(set(categories) | set(catalogue["category"].dropna().astype(str)))
    countries = sorted(events["country"].dropna().astype(str).unique().tolist()) if "country" in events.columns else []
    return Router(
        classifier, default_embedder(), registry=registry, version=version, categories=categories, countries=countries,
        anchor=events["ts"].max(), ids=ctx.ids(),
    )
