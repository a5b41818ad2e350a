"""Plan validation: what a planner may submit and the errors it gets back."""

from __future__ import annotations

from typing import Any

import pytest

from agents.planner import PlanCollector, PlanError, find_cycle, validate_plan
from agents.specs import parse_spec

SPEC = parse_spec(
    '+++\nid = "s"\ntitle = "S"\n+++\n\n## Goal\nBuild a small and precise thing.\n\n'
    "## Boundaries\n- src/\n- tests/test_s.py\n\n## Acceptance\n- `pytest -q`\n")


def task(id_: str, **kw: Any) -> dict[str, Any]:
    return {"id": id_, "title": id_.upper(), "paths": kw.pop("paths", ["src/a.py"]),
            "acceptance": kw.pop("acceptance", ["pytest -q"]), **kw}


def test_a_valid_dag_is_accepted() -> None:
    tasks = validate_plan(SPEC, {"tasks": [task("a"), task("b", depends_on=["a"],
                                                           paths=["tests/test_s.py"])]})
    assert [t.id for t in tasks] == ["a", "b"] and tasks[1].depends_on == ["a"]


@pytest.mark.parametrize(("plan", "message"), [
    ({"tasks": []}, "tasks: List should have at least 1 item"),
    ({"tasks": [task("a"), task("a")]}, "duplicate task ids: a"),
    ({"tasks": [task("a", depends_on=["z"])]}, "task a: depends on unknown task(s) z"),
    ({"tasks": [task("a", paths=["docs/x.md"])]}, "paths outside the spec's Boundaries"),
    ({"tasks": [task("a", acceptance=[" "])]}, "task a: needs at least one acceptance command"),
    ({"tasks": [task("a", depends_on=["b"]), task("b", depends_on=["a"])]},
     "dependency cycle: a -> b -> a"),
    ({"tasks": [task("Bad ID")]}, "tasks.0.id: id 'Bad ID': expected lowercase letters"),
    ({"tasks": [task("a", surprise=1)]}, "tasks.0.surprise: Extra inputs are not permitted"),
])
def test_bad_plans_are_explained(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as caught:
        validate_plan(SPEC, plan)
    assert message in str(caught.value)


def test_the_tool_returns_errors_to_the_planner_and_keeps_a_good_plan() -> None:
    collector = PlanCollector(SPEC)
    bad = collector({"tasks": [task("a", paths=["/etc"])]})
    assert bad.is_error and "plan rejected" in bad.content and collector.tasks is None
    good = collector({"tasks": [task("a")]})
    assert good.finished and collector.tasks is not None and len(collector.tasks) == 1


def test_find_cycle() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["b"]}) == ["b", "c", "b"]
