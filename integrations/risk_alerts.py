"""Risk alerts to Slack: decisions at review or above, posted as Block Kit with the reasons and buttons."""

from __future__ import annotations

from typing import Any, Callable


def alerts_from_settings(settings: Any, ws: Any) -> Callable[[list[dict[str, Any]]], None] | None:
    """The alert poster the settings configure, or None when no alert channel is set."""
    return None
