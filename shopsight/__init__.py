"""ShopSight from Python: open a workspace, ask questions, call any tool as a function, get scores as a DataFrame.

    import shopsight

    shop = shopsight.open_workspace("workspace")
    shop.predict_churn(user_id="u00042")          # any tool, as the agent calls it
    shop.scores("churn").head()                    # per-user scores of the latest churn model
    shop.ask("top 5 users by churn").answer        # one grounded answer (agent.types.Answer)

Everything goes through the same registry, tool context and agent loop as the CLI, Slack and MCP.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import pandas as pd

    from shopsight.agent.loop import Agent
    from shopsight.agent.settings import Settings
    from shopsight.agent.types import Answer
    from shopsight.behavior.workspace import Workspace
    from shopsight.tools.context import ToolContext
    from shopsight.tools.registry import Registry

__all__ = ["Shop", "ToolError", "open_workspace"]

# The repository keeps agent/, tools/, index/, … at its top level and the install maps them under
# this package (pyproject.toml's package-dir). Run from a checkout, or from an editable install of
# one, the subpackages are beside this folder rather than in it: look there too, so the code of the
# checkout that is running (a worktree, a fresh clone) is the code that is imported.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "tools" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

def refuse_top_level_import(module_name: str) -> None:
    """Stop ``import tools`` (run from a checkout) from loading a second copy beside ``shopsight.tools``."""
    if module_name != "__main__" and not module_name.startswith(__name__ + "."):
        raise ImportError(f"ShopSight's '{module_name}' is `shopsight.{module_name}`: the repository's folders are "
                          f"installed under one package, so `import shopsight` (or `from shopsight.{module_name} "
                          f"import ...`)")


class ToolError(ValueError):
    """A tool answered with an error (unknown user, bad argument); ``result`` is what it returned, hint included."""

    def __init__(self, name: str, result: dict[str, Any]) -> None:
        super().__init__(f"{name}: {result['error']}" + (f" ({result['hint']})" if result.get("hint") else ""))
        self.result = result


class Shop:
    """One workspace: its tools as methods, its score tables, and the agent (built on the first question).

    Args:
        settings: The configuration (``agent.settings.Settings``), as the CLI builds it.
        workspace: The workspace to read.
    """

    def __init__(self, settings: Settings, workspace: Workspace) -> None:
        from shopsight.tools import ToolContext, default_registry

        workspace.require_events()
        self.settings = settings
        self.workspace = workspace
        self.registry: Registry = default_registry()
        self.ctx: ToolContext = ToolContext(workspace, chroma_url=settings.chroma_url, raise_errors=settings.raise_errors)
        self._agent: Agent | None = None

    @property
    def tools(self) -> tuple[str, ...]:
        """The tools' names; each is also a method (``shop.top_users(metric="risk")``)."""
        return self.registry.names

    def tool(self, name: str, /, **args: Any) -> dict[str, Any]:
        """Run tool ``name`` with ``args`` and return its whole result (what ``ask --json`` shows).

        Raises:
            ToolError: the tool answered with an error (its ``result`` carries the hint).
            KeyError: there is no tool ``name`` (naming the tools).
        """
        self.registry.get(name)  # an unknown name fails here, naming the tools
        result = self.registry.run(self.ctx, name, args)
        if "error" in result:
            raise ToolError(name, result)
        return result

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        registry = self.__dict__.get("registry")
        if registry is None or not registry.has(name):
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
        call = functools.partial(self.tool, name)
        call.__doc__ = inspect.getdoc(registry.get(name).func)  # type: ignore[attr-defined]
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.registry.names})

    def scores(self, model: str) -> pd.DataFrame:
        """The latest ``model``'s per-user scores (one row per user: ``user_id``, ``probability``, …).

        ``df.attrs["model"]`` is the ``name@version`` to cite.

        Raises:
            ValueError: ``model`` is not one of the models.
            ModelError: the model is not trained (with the command to train it).
        """
        from shopsight.behavior.models import MODEL_NAMES
        from shopsight.behavior.models.registry import latest_version, load_scores

        if model not in MODEL_NAMES:
            raise ValueError(f"no model {model!r}: the models are {', '.join(MODEL_NAMES)}")
        df = load_scores(self.workspace, model)
        df.attrs["model"] = f"{model}@{latest_version(self.workspace, model)}"
        return df

    def ask(self, question: str, conversation_id: str | None = None) -> Answer:
        """One grounded answer, as ``shopsight ask`` gives it (a follow-up passes the earlier answer's conversation_id)."""
        if self._agent is None:
            from shopsight.agent.loop import build_agent

            self._agent = build_agent(self.settings, self.workspace, ctx=self.ctx)
        return self._agent.ask(question, conversation_id=conversation_id)

    def close(self) -> None:
        """Release what the tools opened (the query engine's connection)."""
        self.ctx.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Shop({str(self.workspace.root)!r}, tools={len(self.registry)})"


def open_workspace(path: str | Path | None = None, **settings: Any) -> Shop:
    """Open the workspace at ``path`` (default: ``$SHOPSIGHT_HOME``, else ``./workspace``).

    Args:
        path: The workspace folder.
        **settings: Settings that beat the environment, as CLI flags do: ``backend="openai"``,
            ``model=…``, ``writer="none"`` (answers from the deterministic narrative, no LLM), …

    Raises:
        WorkspaceError: the folder has no events (with the command that makes them).
    """
    from shopsight.agent.settings import Settings
    from shopsight.behavior.workspace import Workspace

    config = Settings.from_env(home=path, **settings)
    return Shop(config, Workspace.at(config.home))
