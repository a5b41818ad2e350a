"""The merge queue's state and a person's commands on it.

A committed branch enters the queue (a `queue_entered` event with its risk and whether a
person must approve it); the reconciler (agents/decide.py) lands the first entry that is
cleared, one at a time, in queue order. Everything lives in the store's `queue` projection,
so a console in another process sees the same order and a restarted run picks up where it
stopped: an entry approved before a crash stays approved, one waiting for a person keeps
waiting.

People act through four commands (approve, reject, move, retry); each one is an event, and
the reconciler decides again when it is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from agents import events as ev
from agents.errors import FactoryError
from agents.landing import LandingRequest
from agents.statuses import QUEUE_OPEN, Approval, QueueStatus, TaskStatus
from agents.store.projections import task_key


class QueueStore(Protocol):
    async def append(self, *events: ev.Event) -> int: ...

    def get(self, table: str, key: str) -> dict[str, Any] | None: ...

    def rows(self, table: str) -> list[dict[str, Any]]: ...


class MergeQueue:
    def __init__(self, store: QueueStore, approval: str = "never") -> None:
        self.store = store
        self.approval = approval

    async def may_land(self, request: LandingRequest) -> str | None:
        """Asked by the landing step just before main moves: the entry as the store has it
        now must still be this commit, landing, and approved when approval was asked."""
        entry = self.store.get("queue", task_key(request.spec_id, request.task_id))
        if entry is None:
            return "the queue has no entry for it any more"
        if entry["commit_sha"] != request.commit:
            return (f"the queue's entry is now commit {str(entry['commit_sha'])[:12]}, "
                    f"not {request.commit[:12]}")
        if entry["approval"] not in (Approval.APPROVED, Approval.NOT_REQUIRED):
            return f"it is not approved to land ({entry['approval']})"
        if entry["status"] != QueueStatus.LANDING:
            return f"it is no longer landing ({entry['status']})"
        return None

    # -- a person's side -------------------------------------------------------------------

    def _open_entry(self, key: str) -> dict[str, Any]:
        entry = self.store.get("queue", key)
        if entry is None:
            raise FactoryError(f"no queue entry {key}")
        return entry

    async def approve(self, key: str, by: str = "console") -> None:
        entry = self._open_entry(key)
        if entry["approval"] != Approval.PENDING:
            raise FactoryError(f"{key} is not waiting for approval ({entry['approval']})")
        await self.store.append(ev.ApprovalDecided(
            spec_id=entry["spec_id"], task_id=entry["task_id"], approved=True, by=by))

    async def reject(self, key: str, reason: str, by: str = "console") -> None:
        entry = self._open_entry(key)
        if entry["status"] not in (QueueStatus.QUEUED, QueueStatus.AWAITING_APPROVAL):
            raise FactoryError(f"{key} cannot be rejected now ({entry['status']})")
        if not reason.strip():
            raise FactoryError("a rejection needs a reason")
        await self.store.append(ev.ApprovalDecided(
            spec_id=entry["spec_id"], task_id=entry["task_id"], approved=False, by=by,
            reason=reason.strip()))

    def order(self) -> list[dict[str, Any]]:
        """Open entries, first to land first."""
        return sorted((r for r in self.store.rows("queue") if r["status"] in QUEUE_OPEN),
                      key=lambda r: r["position"])

    async def move(self, key: str, delta: int) -> None:
        """Move an open entry up (negative) or down among the entries not yet landing."""
        waiting = [r["key"] for r in self.order() if r["status"] != QueueStatus.LANDING]
        if key not in waiting:
            raise FactoryError(f"{key} is not waiting in the queue")
        at = waiting.index(key)
        to = max(0, min(len(waiting) - 1, at + delta))
        if to == at:
            return
        waiting.insert(to, waiting.pop(at))
        await self.store.append(ev.QueueReordered(order=waiting))


def latest_runs(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each entry's latest test run, by the entry's key (a run holds the entries it tested):
    what `factory queue` and the console's queue pane show for an entry."""
    out: dict[str, dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["started"] or 0):
        for key in run["keys"] or []:
            out[key] = run
    return out


def retry_event(store: QueueStore, key: str) -> ev.QueueRetried:
    """The event that puts a rejected entry back in the queue, or why it cannot go back."""
    task = store.get("tasks", key)
    if task is None:
        raise FactoryError(f"no task {key}")
    if task["status"] != TaskStatus.REJECTED or not task["commit_sha"] or not task["branch"]:
        raise FactoryError(f"{key} is {task['status']}: only a rejected branch can be retried")
    return ev.QueueRetried(spec_id=task["spec_id"], task_id=task["task_id"],
                           branch=task["branch"])
