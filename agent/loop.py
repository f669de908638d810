"""The one agent loop for every backend: LangChain's tool-calling agent, then the grounding guard.

``Agent.ask`` runs the question through ``langchain.agents.create_agent`` (model → tools →
model, with a step limit), streams the answer's tokens, checks every number against the tool
results, asks for one rewrite if needed, else renders a deterministic answer, appends
citations, and stores the turn in the workspace's conversation store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from agent.backends import CANNED_PROMPTS, REWRITE_FLAG, USAGE, BackendError, turn_tool_calls
from agent.guard import check_grounding, citations, render_answer, with_citations
from agent.memory import ConversationStore
from agent.settings import Settings
from behavior.privacy import mask_pii
from prompts import load_prompt, prompt_set_version
from tools import ToolContext, langchain_tools

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]


@dataclass
class AgentAnswer:
    """One answered question, as `ask --json` prints it."""

    answer: str
    tool_calls: list[dict[str, Any]]
    citations: dict[str, list[str]]
    backend: str
    model: str
    prompt_version: str
    latency_s: float
    conversation_id: str
    first_token_s: float | None = None
    router_s: float | None = None
    router: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)
    draft: str | None = None
    tokens: int | None = None  # prompt + completion tokens the LLM used for this answer (None: none reported)
    usage: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Agent:
    """Answers questions about one workspace with one chat model (hosted, or router + local LLM)."""

    def __init__(
        self,
        settings: Settings,
        ctx: ToolContext,
        chat_model: BaseChatModel,
        *,
        store: ConversationStore | None = None,
        backend: str | None = None,
        model: str | None = None,
        router_version: str | None = None,
    ) -> None:
        from langchain.agents import create_agent

        self.settings = settings
        self.ctx = ctx
        self.chat_model = chat_model
        self.store = store or ConversationStore.for_workspace(ctx.workspace)
        self.backend = backend or settings.backend
        self.model = model or settings.model_label
        self.router_version = router_version
        self.system_prompt = load_prompt("system").text
        self.prompt_version = prompt_set_version()
        self.canned = {load_prompt(name).text for name in CANNED_PROMPTS}  # fixed router texts, read once like the system prompt
        self.graph = create_agent(chat_model, langchain_tools(ctx), system_prompt=self.system_prompt)

    # -------------------------------------------------------------------------------------
    def ask(self, question: str, conversation_id: str | None = None, on_token: TokenCallback | None = None) -> AgentAnswer:
        """Answer ``question`` within ``conversation_id`` (created if new; default: a new one).

        Args:
            question: The analyst's question.
            conversation_id: Continue this conversation (follow-ups see its earlier turns).
            on_token: Called with each streamed piece of the draft answer.
        """
        t0 = time.perf_counter()
        question = question.strip()
        if not question:
            raise ValueError("the question is empty: ask something, e.g. \"top 10 users by churn\"")
        cid = self.store.new_conversation(self.backend, self.model, conversation_id)
        history = self.store.messages(cid) if conversation_id else []
        inputs: list[BaseMessage] = history + [HumanMessage(content=question)]

        first_token: list[float] = []
        usage: dict[str, int] = {}
        usage_token = USAGE.set(usage)  # the writers add to it (reset below; a failed ask leaves a harmless stale one)
        final_messages = self._run_graph(inputs, on_token, first_token, t0)
        new_messages = final_messages[len(history):]
        # a call left unanswered at the step limit has no result: it is not part of the answer
        calls = [{"name": c["name"], "args": c["args"], "result": c["result"]} for c in turn_tool_calls(new_messages)
                 if c["result"] is not None]
        draft = next((str(m.content) for m in reversed(new_messages) if isinstance(m, AIMessage) and not m.tool_calls), "")
        results = [c["result"] for c in calls]

        guard: dict[str, Any] = {"ok": True, "rewritten": False, "replaced": False, "unsupported": []}
        answer = draft
        report = check_grounding(answer, results, question, self.system_prompt)
        if not calls and answer.strip() in self.canned:
            pass  # our own refusal/help text: its example numbers are not claims about data
        elif report.leaked_prompt:
            answer, guard = load_prompt("refusal").text, {**guard, "ok": False, "replaced": True, "leaked_prompt": True}
        elif not report.ok or (calls and not answer.strip()):
            guard.update(ok=False, unsupported=report.unsupported, missing=report.missing)
            rewrite = self._rewrite(final_messages, report.unsupported, report.missing)
            guard["rewritten"] = True
            second = check_grounding(rewrite, results, question, self.system_prompt)
            if second.ok and rewrite.strip():
                answer = rewrite
            else:
                # with no tool results there is nothing to report: say what the agent can do
                answer = render_answer(calls) if calls else load_prompt("refusal").text
                guard.update(replaced=True, unsupported_after_rewrite=second.unsupported)
        masked = mask_pii(answer)
        if masked != answer:  # the tools mask personal data; a writer must not invent any either
            answer, guard["masked_personal_data"] = masked, True
        cites = citations(calls)
        answer = with_citations(answer, cites)

        USAGE.reset(usage_token)
        for m in new_messages:  # native tool calling: the hosted model reports its own usage
            meta = getattr(m, "usage_metadata", None) if isinstance(m, AIMessage) else None
            if meta:
                usage["prompt"] = usage.get("prompt", 0) + int(meta.get("input_tokens", 0))
                usage["completion"] = usage.get("completion", 0) + int(meta.get("output_tokens", 0))
        latency = time.perf_counter() - t0
        plan = getattr(self.chat_model, "last_plan", None)
        record = AgentAnswer(
            answer=answer, tool_calls=calls, citations=cites, backend=self.backend, model=self.model,
            prompt_version=self.prompt_version, latency_s=round(latency, 3), conversation_id=cid,
            first_token_s=round(first_token[0], 3) if first_token else None,
            router_s=round(plan.seconds, 4) if plan is not None else None, router=self.router_version,
            guard=guard, draft=draft if answer != draft else None,
            tokens=sum(usage.values()) if usage else None, usage=usage,
        )
        stored = [m for m in new_messages if not (isinstance(m, AIMessage) and not m.tool_calls)]
        self.store.append(cid, stored + [AIMessage(content=answer)], question, record.to_dict())
        return record

    # -------------------------------------------------------------------------------------
    def _run_graph(self, inputs: list[BaseMessage], on_token: TokenCallback | None, first_token: list[float], t0: float) -> list[BaseMessage]:
        """Run the LangChain agent, streaming answer tokens; returns all messages at the end."""
        import openai
        from langgraph.errors import GraphRecursionError

        config = {"recursion_limit": 2 * self.settings.max_steps + 1}
        final: list[BaseMessage] = list(inputs)
        try:
            for mode, payload in self.graph.stream({"messages": inputs}, config=config, stream_mode=["messages", "values"]):
                if mode == "values":
                    final = list(payload["messages"])
                    continue
                chunk, meta = payload
                if meta.get("langgraph_node") != "model" or getattr(chunk, "tool_call_chunks", None):
                    continue
                text = chunk.content if isinstance(chunk.content, str) else ""
                if text:
                    if not first_token:
                        first_token.append(time.perf_counter() - t0)
                    if on_token:
                        on_token(text)
        except GraphRecursionError:
            log.warning("agent stopped after %d steps without a final answer", self.settings.max_steps)
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise BackendError(f"the LLM server at {self.settings.openai_base_url} failed: {exc} "
                               "(is it running? raise SHOPSIGHT_TIMEOUT_S if it is slow)") from exc
        except openai.APIStatusError as exc:
            raise BackendError(f"the LLM server returned an error {exc.status_code}: {exc.message}") from exc
        return final

    def _rewrite(self, messages: list[BaseMessage], unsupported: list[str], missing: list[str]) -> str:
        """Ask the model once more for an answer that uses only tool numbers."""
        import openai

        problems = []
        if unsupported:
            problems.append(f"used numbers or ids that are not in the tool results ({', '.join(unsupported)})")
        if missing:
            problems.append(f"left out {', '.join(missing)}")
        note = (f"Your answer {' and '.join(problems) or 'was empty'}. "
                "Rewrite it using only the numbers and ids that appear in the tool results.")
        request = [SystemMessage(content=self.system_prompt), *messages, HumanMessage(content=note, additional_kwargs={REWRITE_FLAG: True})]
        try:
            reply = self.chat_model.invoke(request)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError) as exc:
            log.warning("rewrite failed: %s", exc)
            return ""
        if isinstance(reply, AIMessage) and reply.tool_calls:
            return ""
        return str(reply.content)


# --- building an agent from settings -----------------------------------------------------------
def build_agent(settings: Settings, workspace: Any, *, chat_model: BaseChatModel | None = None, ctx: ToolContext | None = None) -> Agent:
    """The agent for ``settings`` on ``workspace``: checks the workspace, model file or server first.

    Raises:
        WorkspaceError: the workspace has no events, or the router is not trained (local backend).
        BackendError: the model file is missing or the server does not answer.
    """
    workspace.require_events()
    ctx = ctx or ToolContext(workspace, chroma_url=settings.chroma_url, raise_errors=settings.raise_errors)
    if chat_model is not None:
        return Agent(settings, ctx, chat_model)
    router_version = None
    if settings.uses_router:
        from agent.backends import LlamaWriter, OpenAIWriter, RouterChatModel, check_server

        if settings.backend == "openai":
            check_server(settings)
            writer: Any = OpenAIWriter(settings)
        else:
            writer = LlamaWriter(settings)
            writer.check()  # a missing model file fails now, before anything slow
        router = make_router(ctx)
        router_version = router.version
        if isinstance(writer, LlamaWriter):
            writer.load()
        chat_model = RouterChatModel(router=router, writer=writer.stream, model_name=settings.model_label)
    else:
        from agent.backends import check_server, hosted_chat_model

        if settings.backend != "openai":
            raise BackendError("native tool calling needs SHOPSIGHT_BACKEND=openai; the local model plans with the router")
        check_server(settings)
        chat_model = hosted_chat_model(settings)
    return Agent(settings, ctx, chat_model, router_version=router_version)


def make_router(ctx: ToolContext) -> Any:
    """The workspace's trained router, with entity lists (categories, countries) from its events."""
    from agent.router import Router, default_embedder, load_router

    classifier, version = load_router(ctx.workspace)
    events = ctx.get_events()
    categories = sorted(events["category"].dropna().astype(str).unique().tolist())
    catalogue = ctx.workspace.load_catalogue()
    if catalogue is not None and "category" in catalogue.columns:
        categories = sorted(set(categories) | set(catalogue["category"].dropna().astype(str)))
    countries = sorted(events["country"].dropna().astype(str).unique().tolist()) if "country" in events.columns else []
    order_ids: frozenset[str] = frozenset(events["order_id"].dropna().astype(str)) if "order_id" in events.columns else frozenset()
    return Router(
        classifier, default_embedder(), version=version, categories=categories, countries=countries,
        anchor=events["ts"].max(), user_exists=ctx.has_user, order_exists=order_ids.__contains__,
    )
