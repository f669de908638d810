"""Judge the stored answers of an earlier eval run with today's checks (for before/after on a held-out set).

An eval run keeps every answer, with its tool calls and results, in the workspace's conversation
store (conversation ``eval-<run id>-<case id>``). This replays those answers through the current
runner, so a run made with older code is scored by the same checks as a run made today:

    .venv/bin/python bench/rejudge.py evals/heldout_demo.yaml RUN_DIR/report.json -w WS --out OUT_DIR
    shopsight eval diff OUT_DIR BEFORE_OUT_DIR

Prints the totals and writes report.json / report.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class StoredAnswers:
    """Answers each question with the answer the earlier run gave it, in order, per conversation."""

    def __init__(self, store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.served: dict[str, int] = defaultdict(int)

    def ask(self, question: str, conversation_id: str):
        from shopsight.agent.types import Answer

        stored = conversation_id
        records = self.store.records(stored)
        n = self.served[conversation_id]
        self.served[conversation_id] += 1
        if n >= len(records):
            raise LookupError(f"run {self.run_id} stored no answer {n + 1} for {stored}")
        record = dict(records[n])
        record.setdefault("question", question)
        refused = record.get("answer", "") and not record.get("tool_calls") and record.get("kind") is None
        answer = Answer.from_dict(record)
        if refused and answer.answer.strip() in self._canned:
            from dataclasses import replace

            answer = replace(answer, kind=self._canned[answer.answer.strip()])
        return answer

    @property
    def _canned(self) -> dict[str, str]:
        from shopsight.prompts import load_prompt

        return {load_prompt("refusal").text: "refusal", load_prompt("privacy").text: "privacy",
                load_prompt("help").text: "help", load_prompt("clarify").text: "clarify"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", type=Path, help="the question set the run used")
    parser.add_argument("report", type=Path, help="the earlier run's report.json (or its folder)")
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="the workspace the run asked about")
    parser.add_argument("--out", type=Path, required=True, help="folder for the re-judged report")
    args = parser.parse_args(argv)

    from shopsight.agent.memory import ConversationStore
    from shopsight.behavior.workspace import Workspace
    from shopsight.evals.backends import system_prompt_text
    from shopsight.evals.report import TOTALS, format_total, load_report, write_report
    from shopsight.evals.roles import RoleResolver
    from shopsight.evals.runner import run_eval_set
    from shopsight.evals.schema import load_eval_set

    earlier = load_report(args.report)
    ws = Workspace.at(args.workspace)
    answerer = StoredAnswers(ConversationStore.for_workspace(ws), earlier["run_id"])

    class Prefixed:  # the replay's conversation ids are mapped back to the earlier run's
        def ask(self, question: str, conversation_id: str):
            case = conversation_id.split("-", 3)[-1]
            return answerer.ask(question, f"eval-{earlier['run_id']}-{case}")

    run = run_eval_set(load_eval_set(args.set), Prefixed(), resolver=RoleResolver(ws), system_prompt=system_prompt_text(),
                       meta={**earlier.get("meta", {}), "rejudged_from": earlier["run_id"]})
    write_report(run, args.out)
    for key, label in TOTALS:
        print(f"{label:48s} {format_total(key, run.totals.get(key))}")
    print(json.dumps({"guard_by_tool": run.totals.get("guard_by_tool")}, indent=1))
    print(f"Wrote {args.out}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
