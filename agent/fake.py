"""A scripted chat model for tests and evals: plays given replies in order and records what it was sent."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

Reply = Union[AIMessage, str, Callable[[list[BaseMessage]], AIMessage]]


class ScriptExhausted(AssertionError):
    """The agent asked the scripted model for more turns than the test scripted."""


class ScriptedChatModel(BaseChatModel):
    """Returns ``replies`` one per call (a message, a text, or a function of the messages).

    Every call's messages are kept in ``calls`` so a test can assert what an LLM would have seen.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    replies: list[Any]
    calls: list[list[BaseMessage]] = []
    bound_tools: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        self.bound_tools = [getattr(t, "name", str(t)) for t in tools]
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        if len(self.calls) > len(self.replies):
            raise ScriptExhausted(f"scripted model ran out of replies after {len(self.replies)} turns")
        reply = self.replies[len(self.calls) - 1]
        if callable(reply):
            reply = reply(list(messages))
        if isinstance(reply, str):
            reply = AIMessage(content=reply)
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def seen_text(self) -> str:
        """Everything the model was sent, as one string (for PII and leak assertions)."""
        return "\n".join(str(m.content) for call in self.calls for m in call)
