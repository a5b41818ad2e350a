"""Spec → a validated DAG of tasks, through a planner agent's `submit_plan` tool.

The plan is checked before anything runs: unique ids, known dependencies, no cycle, every
task's paths inside the spec's Boundaries, every task with an acceptance check. A plan that
fails goes back to the planner as a tool error it can fix.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.events import PlannedTask
from agents.ids import EXPECTED, Id
from agents.specs import Spec, path_in_boundaries
from agents.tools import ToolOutcome


class _PlanTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Ids name branches, worktree folders and agents: the shared definition, whose schema
    # gives the model the pattern and length and whose error says what was wrong.
    id: Id = Field(description=f"unique in the plan; {EXPECTED}")
    title: str = Field(min_length=1)
    role: str = "implementer"
    instructions: str = ""
    paths: list[str] = Field(min_length=1, description="files or folders the task may change")
    depends_on: list[Id] = Field(default=[], description="ids of tasks in this plan")
    acceptance: list[str] = Field(min_length=1, description="commands that must pass")


class Plan(BaseModel):
    """Submit the task plan for this spec."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[_PlanTask] = Field(min_length=1)


SUBMIT_PLAN_SPEC: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit_plan",
        "description": "Submit the plan: a list of tasks forming an acyclic graph.",
        "parameters": {k: v for k, v in Plan.model_json_schema().items() if k != "title"},
    },
}


class PlanError(ValueError):
    pass


_LISTED = 10  # schema problems named in one rejection


def validate_plan(spec: Spec, raw: dict[str, Any]) -> list[PlannedTask]:
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # Bounded: the message goes back into the planner's context.
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in errors[:_LISTED]
        )
        if len(errors) > _LISTED:
            problems += f"; and {len(errors) - _LISTED} more"
        raise PlanError(f"the plan does not match its schema: {problems}") from None
    ids = [t.id for t in plan.tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PlanError(f"duplicate task ids: {', '.join(duplicates)}")
    known = set(ids)
    for task in plan.tasks:
        unknown = [d for d in task.depends_on if d not in known]
        if unknown:
            raise PlanError(f"task {task.id}: depends on unknown task(s) {', '.join(unknown)}")
        outside = [p for p in task.paths if not path_in_boundaries(p, spec.boundaries)]
        if outside:
            raise PlanError(
                f"task {task.id}: paths outside the spec's Boundaries "
                f"({', '.join(spec.boundaries) or 'none declared'}): {', '.join(outside)}"
            )
        if not any(cmd.strip() for cmd in task.acceptance):
            raise PlanError(f"task {task.id}: needs at least one acceptance command")
    cycle = find_cycle({t.id: t.depends_on for t in plan.tasks})
    if cycle:
        raise PlanError(f"the plan has a dependency cycle: {' -> '.join(cycle)}")
    return [PlannedTask(**t.model_dump()) for t in plan.tasks]


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def plan_digest(tasks: list[PlannedTask]) -> str:
    body = json.dumps([t.model_dump() for t in tasks], sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()[:16]


class PlanCollector:
    """The `submit_plan` tool for one planner agent; keeps the accepted plan."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.tasks: list[PlannedTask] | None = None

    def __call__(self, arguments: dict[str, Any]) -> ToolOutcome:
        try:
            self.tasks = validate_plan(self.spec, arguments)
        except PlanError as exc:
            return ToolOutcome(f"plan rejected: {exc}", is_error=True)
        return ToolOutcome(
            f"plan accepted: {len(self.tasks)} tasks", finished=True,
            summary=f"planned {len(self.tasks)} tasks",
        )


def planner_messages(spec: Spec, spec_text: str,
                     previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The planner's opening. With `previous` (the tasks of the plan in force, when the spec
    was edited), the planner is asked to keep the id and the exact fields of every task the
    edit does not change: the engine keeps the work of a task whose fields are unchanged and
    re-runs only the rest."""
    system = (
        "You are the planner of a software factory. Decompose the spec into a small graph of "
        "tasks that separate agents can do in parallel on their own git branches. Each task "
        "lists the paths it may change (inside the spec's Boundaries), the tasks it depends "
        "on, and the acceptance commands that prove it done. Call submit_plan once."
    )
    user = f"Spec `{spec.id}`:\n\n{spec_text}"
    if previous:
        listing = json.dumps(previous, indent=1, sort_keys=True)
        user += ("\n\nThe spec was edited. The plan in force (as JSON) follows. Keep every "
                 "task the edit does not affect exactly as it is (same id, same fields): its "
                 "work is kept. Change or drop the tasks the edit affects, and add new ones "
                 "with new ids.\n\n" + listing)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ]
