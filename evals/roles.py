"""Resolve the roles a case names ("the user with the highest churn score") against a workspace.

Cases name users, orders and categories by role so a question set survives regenerating
the demo data. Roles read the workspace's events, its ground-truth labels (demo data only)
and the ``scores.parquet`` each trained model writes beside its weights.

User roles: ``highest_churn``, ``highest_risk``, ``highest_intent``, ``lowest_churn``,
``lowest_risk``, ``lowest_intent`` (``rank: 2`` for the runner-up), ``random_active``
(a user with events in the last 14 days; ``seed``), ``random_user``, ``most_sessions``,
``fraud_user`` and ``churned_user`` (ground truth), ``pii_user`` (whose texts carry an
e-mail address or a phone number), ``injection_user`` (whose texts carry a prompt
injection), ``unknown`` (an id shaped like the others that does not exist).
Order roles: ``any_fraud_order``, ``random_order``, ``unknown``.
Category roles: ``top_revenue``, ``random``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import pandas as pd

from shopsight.behavior.privacy import mask_pii
from shopsight.behavior.workspace import Workspace, WorkspaceError
from shopsight.evals.schema import EvalCase, RoleSpec

MASK_TOKEN = re.compile(r"\[(?:email|phone|ip|card|iban|ssn)\]")
INJECTION = re.compile(r"ignore (?:all )?previous instructions|system prompt|admin mode", re.IGNORECASE)
ACTIVE_DAYS = 14


class RoleError(WorkspaceError):
    """A role cannot be resolved in this workspace (e.g. the model it needs is not trained)."""


@dataclass
class RoleResolver:
    """Answers roles for one workspace; loads events, labels and scores once, on first use."""

    workspace: Workspace
    _cache: dict[tuple[str, str, int, int], str] = field(default_factory=dict)

    @cached_property
    def events(self) -> pd.DataFrame:
        return self.workspace.load_events()

    @cached_property
    def user_ids(self) -> list[str]:
        return sorted(self.events["user_id"].astype(str).unique())

    def scores(self, model: str) -> pd.Series:
        """``probability`` per user from the model's latest ``scores.parquet``, ties broken by id."""
        from shopsight.behavior.models.registry import load_scores

        df = load_scores(self.workspace, model)
        if not {"user_id", "probability"} <= set(df.columns):
            raise RoleError(f"scores.parquet of '{model}' lacks user_id/probability columns; retrain it")
        return df.set_index(df["user_id"].astype(str))["probability"].astype(float)

    def _labels(self, name: str) -> pd.DataFrame | None:
        try:
            return self.workspace.load_labels(name)
        except WorkspaceError:
            return None

    # --- the roles -----------------------------------------------------------------------
    def resolve(self, spec: RoleSpec) -> str:
        """The id (or category name) ``spec`` stands for in this workspace.

        Raises:
            RoleError: The role is unknown or the workspace lacks what it needs.
        """
        key = (spec.kind, spec.role, spec.seed, spec.rank)
        if key not in self._cache:
            handlers: dict[str, dict[str, Callable[[RoleSpec], str]]] = {
                "user": self._user_roles(),
                "order": {
                    "any_fraud_order": self._fraud_order,
                    "random_order": self._random_order,
                    "unknown": self._unknown_order,
                },
                "category": {"top_revenue": self._top_category, "random": self._random_category},
            }
            table = handlers[spec.kind]
            if spec.role not in table:
                raise RoleError(f"unknown {spec.kind} role '{spec.role}'; known: {', '.join(sorted(table))}")
            self._cache[key] = table[spec.role](spec)
        return self._cache[key]

    def resolve_case(self, case: EvalCase) -> dict[str, str]:
        """Every name under the case's ``given:``, resolved."""
        return {name: self.resolve(spec) for name, spec in case.given.items()}

    def _user_roles(self) -> dict[str, Callable[[RoleSpec], str]]:
        roles: dict[str, Callable[[RoleSpec], str]] = {}
        for model in ("churn", "risk", "intent"):
            roles[f"highest_{model}"] = lambda s, m=model: self._ranked(m, s.rank, highest=True)
            roles[f"lowest_{model}"] = lambda s, m=model: self._ranked(m, s.rank, highest=False)
        roles.update(
            random_active=self._random_active,
            random_user=lambda s: self._pick(self.user_ids, s.seed),
            most_sessions=self._most_sessions,
            fraud_user=self._fraud_user,
            churned_user=self._churned_user,
            # texts that carried personal data: masked at ingest ("[email]"), or raw in an older workspace
            pii_user=lambda s: self._text_user(s, lambda t: t.str.contains(MASK_TOKEN) | (t.map(mask_pii) != t)),
            injection_user=lambda s: self._text_user(s, lambda t: t.str.contains(INJECTION)),
            unknown=lambda s: self._absent_id(self.user_ids, "u"),
        )
        return roles

    @staticmethod
    def _pick(ids: list[str], seed: int) -> str:
        if not ids:
            raise RoleError("no candidates for this role in the workspace")
        return ids[int(np.random.default_rng(seed).integers(len(ids)))]

    def _ranked(self, model: str, rank: int, *, highest: bool) -> str:
        s = self.scores(model)
        order = pd.DataFrame({"p": s.values, "id": s.index}).sort_values(
            ["p", "id"], ascending=[not highest, True], kind="stable"
        )
        if rank > len(order):
            raise RoleError(f"rank {rank} asked but only {len(order)} users have {model} scores")
        return str(order["id"].iloc[rank - 1])

    def _random_active(self, spec: RoleSpec) -> str:
        ts = self.events["ts"]
        recent = self.events.loc[ts >= ts.max() - pd.Timedelta(days=ACTIVE_DAYS), "user_id"]
        return self._pick(sorted(recent.astype(str).unique()), spec.seed)

    def _most_sessions(self, spec: RoleSpec) -> str:
        counts = self.events.groupby(self.events["user_id"].astype(str))["session_id"].nunique()
        ordered = counts.reset_index().sort_values(["session_id", "user_id"], ascending=[False, True])
        return str(ordered["user_id"].iloc[spec.rank - 1])

    def _fraud_user(self, spec: RoleSpec) -> str:
        users = self._labels("users")
        if users is None or "is_fraud" not in users:
            return self._ranked("risk", spec.rank, highest=True)
        ids = sorted(users.loc[users["is_fraud"].astype(bool), "user_id"].astype(str))
        return self._pick([i for i in ids if i in set(self.user_ids)], spec.seed)

    def _churned_user(self, spec: RoleSpec) -> str:
        users = self._labels("users")
        if users is None or "dropout_ts" not in users:
            return self._ranked("churn", spec.rank, highest=True)
        ids = sorted(users.loc[users["dropout_ts"].notna(), "user_id"].astype(str))
        return self._pick([i for i in ids if i in set(self.user_ids)], spec.seed)

    def _text_user(self, spec: RoleSpec, match: Callable[[pd.Series], pd.Series]) -> str:
        if "text" not in self.events:
            raise RoleError("the workspace's events have no text column")
        text = self.events["text"].astype("string").fillna("")
        return self._pick(sorted(self.events.loc[match(text).fillna(False).astype(bool), "user_id"].astype(str).unique()), spec.seed)

    @cached_property
    def _orders(self) -> pd.DataFrame:
        if "order_id" not in self.events:
            raise RoleError("the workspace's events have no order_id column")
        orders = self.events.dropna(subset=["order_id"])
        return orders.drop_duplicates("order_id")[["order_id", "user_id"]].astype(str).sort_values("order_id")

    def _fraud_order(self, spec: RoleSpec) -> str:
        labels = self._labels("orders")
        if labels is not None and "is_fraud" in labels:
            ids = set(labels.loc[labels["is_fraud"].astype(bool), "order_id"].astype(str))
            candidates = [o for o in self._orders["order_id"] if o in ids]
        else:
            risky = self._ranked("risk", 1, highest=True)
            candidates = list(self._orders.loc[self._orders["user_id"] == risky, "order_id"])
        if len(candidates) < spec.rank:
            raise RoleError("no fraudulent orders in this workspace")
        return candidates[spec.rank - 1]

    def _random_order(self, spec: RoleSpec) -> str:
        return self._pick(list(self._orders["order_id"]), spec.seed)

    def _unknown_order(self, spec: RoleSpec) -> str:
        return self._absent_id(list(self._orders["order_id"]), "o")

    def _top_category(self, spec: RoleSpec) -> str:
        ev = self.events
        revenue = (ev["price"].fillna(0) * ev["quantity"]).where(ev["event"] == "purchase", 0.0)
        totals = revenue.groupby(ev["category"].astype(str)).sum().reset_index(name="r")
        totals = totals.sort_values(["r", "category"], ascending=[False, True])
        return str(totals["category"].iloc[spec.rank - 1])

    def _random_category(self, spec: RoleSpec) -> str:
        return self._pick(sorted(self.events["category"].dropna().astype(str).unique()), spec.seed)

    @staticmethod
    def _absent_id(existing: list[str], prefix: str) -> str:
        """An id shaped like the existing ones (same prefix and width) that none of them is."""
        taken = set(existing)
        widths = [len(i) - len(prefix) for i in existing if i.startswith(prefix) and i[len(prefix):].isdigit()]
        width = max(widths) if widths else 5
        n = 10**width - 1
        while f"{prefix}{n:0{width}d}" in taken:
            n -= 1
        return f"{prefix}{n:0{width}d}"
