"""Statuses are defined once (agents/statuses.py): the events' status Literals (the wire and
JSON shape, left as they are) and the typed rows (agents/rows.py) are held to them and to the
projection tables, so none of them can drift."""

from __future__ import annotations

import typing
from collections.abc import Collection
from enum import StrEnum

import pytest

from agents import events as ev
from agents import rows
from agents.statuses import (
    QUEUE_OPEN,
    TASK_DONE,
    AgentStatus,
    Approval,
    BranchStatus,
    QuestionStatus,
    QueueStatus,
    RunStatus,
    SpecStatus,
    TaskStatus,
)
from agents.store.projections import TABLES

# Each event's status Literal and the enum members it is: every status but the ones a
# run or agent is in while it goes on.
EVENT_STATUSES: list[tuple[type, type[StrEnum], Collection[StrEnum]]] = [
    (ev.RunFinished, RunStatus, set(RunStatus) - {RunStatus.RUNNING}),
    (ev.AgentFinished, AgentStatus, set(AgentStatus) - {AgentStatus.RUNNING,
                                                        AgentStatus.WAITING}),
    (ev.SpecFinished, SpecStatus, {SpecStatus.DONE, SpecStatus.FAILED, SpecStatus.BLOCKED,
                                   SpecStatus.CANCELLED}),
]

# Values a Literal allows that its enum lacks (none now: the two agree).
NOT_IN_ENUM: dict[type, set[str]] = {}


def literal_values(event: type) -> set[str]:
    annotation = typing.get_type_hints(event)["status"]
    assert typing.get_origin(annotation) is typing.Literal
    return set(typing.get_args(annotation))


@pytest.mark.parametrize(("event", "enum", "members"), EVENT_STATUSES,
                         ids=[e.__name__ for e, _, _ in EVENT_STATUSES])
def test_an_events_status_literal_is_its_enums_members(
        event: type, enum: type[StrEnum], members: Collection[StrEnum]) -> None:
    values = literal_values(event)
    assert values - {m.value for m in enum} == NOT_IN_ENUM.get(event, set())
    assert values - NOT_IN_ENUM.get(event, set()) == {m.value for m in members}


def test_an_agent_runs_result_is_an_agent_status() -> None:
    """agents.runtime keeps its own Literal for AgentResult.status: every agent status but
    running (a result is how a run of the agent ended, or stopped to wait)."""
    from agents import runtime

    values = set(typing.get_args(runtime.AgentStatus))
    assert values == {m.value for m in AgentStatus} - {AgentStatus.RUNNING.value}


def test_statuses_are_their_strings() -> None:
    """What lets stored and wire rows be compared with the members without conversion."""
    for enum in (RunStatus, SpecStatus, TaskStatus, AgentStatus, QueueStatus, Approval,
                 BranchStatus, QuestionStatus):
        for member in enum:
            assert member == member.value and hash(member) == hash(member.value)
            assert f"{member}" == str(member) == member.value
            assert member.value in {m.value for m in enum}
    assert "landed" in TASK_DONE and "landing" not in TASK_DONE
    assert "awaiting_approval" in QUEUE_OPEN and "landed" not in QUEUE_OPEN


def test_every_table_has_its_row_type() -> None:
    assert list(rows.ROW_TYPES) == list(TABLES)
    assert list(typing.get_type_hints(rows.Tables)) == list(TABLES)
    for table, hint in typing.get_type_hints(rows.Tables).items():
        assert typing.get_args(hint) == (str, rows.ROW_TYPES[table])


@pytest.mark.parametrize("table", list(TABLES))
def test_a_row_types_keys_are_its_tables_columns(table: str) -> None:
    row_type = rows.ROW_TYPES[table]
    hints = typing.get_type_hints(row_type)  # every annotation resolves
    assert tuple(hints) == TABLES[table][1]
    pk = TABLES[table][0]
    assert hints[pk] is str
    assert row_type.__required_keys__ == frozenset(TABLES[table][1])  # type: ignore[attr-defined]


STATUS_TYPES = {"runs": RunStatus, "specs": SpecStatus, "tasks": TaskStatus,
                "agents": AgentStatus, "branches": BranchStatus, "queue": QueueStatus,
                "questions": QuestionStatus}


@pytest.mark.parametrize("table", list(STATUS_TYPES))
def test_a_rows_status_is_typed_as_its_enum(table: str) -> None:
    hint = typing.get_type_hints(rows.ROW_TYPES[table])["status"]
    assert set(typing.get_args(hint)) == {STATUS_TYPES[table], type(None)}


def test_approval_is_typed_as_its_enum() -> None:
    hint = typing.get_type_hints(rows.QueueRow)["approval"]
    assert set(typing.get_args(hint)) == {Approval, type(None)}


@pytest.mark.parametrize(("row_type", "column", "event", "field"), [
    (rows.QueueRow, "risk", ev.QueueEntered, "risk"),
    (rows.QuestionRow, "answered_by", ev.QuestionAnswered, "by"),
])
def test_a_rows_literal_column_is_its_events(row_type: type, column: str, event: type,
                                             field: str) -> None:
    literal, none = typing.get_args(typing.get_type_hints(row_type)[column])
    assert typing.get_origin(literal) is typing.Literal and none is type(None)
    assert set(typing.get_args(literal)) == set(typing.get_args(
        typing.get_type_hints(event)[field]))
