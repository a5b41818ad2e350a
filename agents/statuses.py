"""Every status a run, spec, task, agent, queue entry, branch or question can be in, defined
once.

They are StrEnums: a status is stored, sent to consoles and compared as the plain string it
names ("landed"), so rows read from an older store and rows sent over the wire need no
conversion, and a typo in code is a NameError instead of a status nothing ever matches.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"  # everything planned landed
    FAILED = "failed"  # something was rejected, failed or blocked
    BUDGET = "budget"  # stopped by the run's budget
    CANCELLED = "cancelled"  # stopped by a person (ctrl+c, SIGTERM)
    INTERRUPTED = "interrupted"  # its process is gone and nothing holds its lease


class SpecStatus(StrEnum):
    REGISTERED = "registered"
    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"  # a spec_finished event may say so (none does yet)


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMMITTED = "committed"
    LANDING = "landing"
    LANDED = "landed"
    REJECTED = "rejected"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


TASK_DONE = frozenset({TaskStatus.LANDED, TaskStatus.REJECTED, TaskStatus.FAILED,
                       TaskStatus.BLOCKED, TaskStatus.CANCELLED})


class AgentStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"  # for a person's answer
    FINISHED = "finished"
    FAILED = "failed"
    STUCK = "stuck"
    BUDGET = "budget"
    STEP_LIMIT = "step_limit"
    CANCELLED = "cancelled"


class QueueStatus(StrEnum):
    QUEUED = "queued"
    AWAITING_APPROVAL = "awaiting_approval"
    LANDING = "landing"
    LANDED = "landed"
    REJECTED = "rejected"


QUEUE_OPEN = frozenset({QueueStatus.QUEUED, QueueStatus.AWAITING_APPROVAL,
                        QueueStatus.LANDING})


class Approval(StrEnum):
    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class BranchStatus(StrEnum):
    OPEN = "open"
    LANDING = "landing"
    LANDED = "landed"
    REJECTED = "rejected"


class QuestionStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    WITHDRAWN = "withdrawn"  # its agent stopped for good first


# What a task's `cancel` names when a re-plan (the spec was edited) stops its work: a task
# whose fields changed is stopped and then starts again with its new fields; a task the new
# plan drops is stopped for good.
REPLANNED = "re-plan"
DROPPED = "re-plan: dropped"
