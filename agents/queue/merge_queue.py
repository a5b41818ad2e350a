"""Finished branches land one at a time, in the queue's order, after any approval they need.

The queue sits in front of the landing step (which runs the gates on the merged tree and
advances main). Its state lives in the store's `queue` projection, so a console in another
process sees the same order and a restarted run picks up where it stopped: an entry approved
before a crash stays approved, one waiting for a person keeps waiting.

People act through four commands (approve, reject, move, retry). Each one is an event first;
the waiting landings wake up and re-read the projection, so there is one source of truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from agents import events as ev
from agents.errors import FactoryError
from agents.landing import LandingOutcome, LandingRequest, LandingStep
from agents.queue.risk import assess_risk, needs_approval
from agents.store.projections import QUEUE_OPEN, task_key


class QueueStore(Protocol):
    async def append(self, *events: ev.Event) -> int: ...

    def get(self, table: str, key: str) -> dict[str, Any] | None: ...

    def rows(self, table: str) -> list[dict[str, Any]]: ...


class MergeQueue:
    def __init__(self, lander: LandingStep | None, store: QueueStore,
                 approval: str = "never") -> None:
        self.lander = lander
        self.store = store
        self.approval = approval
        self._changed = asyncio.Condition()
        self._waiting: set[str] = set()
        self._landing: str | None = None

    # -- the engine's side -----------------------------------------------------------------

    async def land(self, request: LandingRequest, branch: dict[str, Any],
                   on_turn: Callable[[], Awaitable[object]]) -> LandingOutcome:
        """Enter the queue (once per commit), wait for approval and for our turn, land.

        on_turn runs when this entry reaches the head of the queue, before the gates: the
        orchestrator records the landing's start there.
        """
        key = task_key(request.spec_id, request.task_id)
        row = self.store.get("queue", key)
        if row is not None and row["commit_sha"] == request.commit and \
                row["approval"] == "rejected":
            # A person said no to this very commit (perhaps while no run was going).
            return LandingOutcome(False, gate="approval",
                                  reason=row["reason"] or "rejected by a person")
        if row is None or row["commit_sha"] != request.commit or row["status"] not in QUEUE_OPEN:
            risk, reasons = assess_risk(branch.get("files") or [],
                                        branch.get("insertions") or 0,
                                        branch.get("deletions") or 0)
            await self.store.append(ev.QueueEntered(
                spec_id=request.spec_id, task_id=request.task_id, branch=request.branch,
                commit=request.commit, risk=risk, risk_reasons=reasons,
                needs_approval=needs_approval(self.approval, risk)))
            await self._notify()
        async with self._changed:
            self._waiting.add(key)
            try:
                await self._changed.wait_for(lambda: self._decided(key))
                entry = self.store.get("queue", key)
                assert entry is not None
                if entry["approval"] == "rejected":
                    return LandingOutcome(False, gate="approval",
                                          reason=entry["reason"] or "rejected by a person")
                await self._changed.wait_for(lambda: self._is_next(key))
                self._landing = key
            finally:
                self._waiting.discard(key)
        try:
            await on_turn()
            assert self.lander is not None, "a queue without a landing step only records"
            return await self.lander.land(request, self.may_land)
        finally:
            async with self._changed:
                self._landing = None
                self._changed.notify_all()

    async def may_land(self, request: LandingRequest) -> str | None:
        """Asked by the landing step just before main moves: the entry as the store has it
        now must still be this commit, landing, and approved when approval was asked."""
        entry = self.store.get("queue", task_key(request.spec_id, request.task_id))
        if entry is None:
            return "the queue has no entry for it any more"
        if entry["commit_sha"] != request.commit:
            return (f"the queue's entry is now commit {str(entry['commit_sha'])[:12]}, "
                    f"not {request.commit[:12]}")
        if entry["approval"] not in ("approved", "not_required"):
            return f"it is not approved to land ({entry['approval']})"
        if entry["status"] != "landing":
            return f"it is no longer landing ({entry['status']})"
        return None

    def _decided(self, key: str) -> bool:
        entry = self.store.get("queue", key)
        return entry is not None and entry["approval"] != "pending"

    def _is_next(self, key: str) -> bool:
        if self._landing is not None:
            return False
        ready = [self.store.get("queue", k) for k in self._waiting]
        # An entry recorded as landing was cut short by a stop: it goes first.
        ready = [r for r in ready if r is not None and r["status"] in ("queued", "landing")]
        return bool(ready) and min(
            ready, key=lambda r: (r["status"] != "landing", r["position"]))["key"] == key

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- a person's side -------------------------------------------------------------------

    def _open_entry(self, key: str) -> dict[str, Any]:
        entry = self.store.get("queue", key)
        if entry is None:
            raise FactoryError(f"no queue entry {key}")
        return entry

    async def approve(self, key: str, by: str = "console") -> None:
        entry = self._open_entry(key)
        if entry["approval"] != "pending":
            raise FactoryError(f"{key} is not waiting for approval ({entry['approval']})")
        await self.store.append(ev.ApprovalDecided(
            spec_id=entry["spec_id"], task_id=entry["task_id"], approved=True, by=by))
        await self._notify()

    async def reject(self, key: str, reason: str, by: str = "console") -> None:
        entry = self._open_entry(key)
        if entry["status"] not in ("queued", "awaiting_approval"):
            raise FactoryError(f"{key} cannot be rejected now ({entry['status']})")
        if not reason.strip():
            raise FactoryError("a rejection needs a reason")
        await self.store.append(ev.ApprovalDecided(
            spec_id=entry["spec_id"], task_id=entry["task_id"], approved=False, by=by,
            reason=reason.strip()))
        await self._notify()

    def order(self) -> list[dict[str, Any]]:
        """Open entries, first to land first."""
        return sorted((r for r in self.store.rows("queue") if r["status"] in QUEUE_OPEN),
                      key=lambda r: r["position"])

    async def move(self, key: str, delta: int) -> None:
        """Move an open entry up (negative) or down among the entries not yet landing."""
        waiting = [r["key"] for r in self.order() if r["status"] != "landing"]
        if key not in waiting:
            raise FactoryError(f"{key} is not waiting in the queue")
        at = waiting.index(key)
        to = max(0, min(len(waiting) - 1, at + delta))
        if to == at:
            return
        waiting.insert(to, waiting.pop(at))
        await self.store.append(ev.QueueReordered(order=waiting))
        await self._notify()


def retry_event(store: QueueStore, key: str) -> ev.QueueRetried:
    """The event that puts a rejected entry back in the queue, or why it cannot go back."""
    task = store.get("tasks", key)
    if task is None:
        raise FactoryError(f"no task {key}")
    if task["status"] != "rejected" or not task["commit_sha"] or not task["branch"]:
        raise FactoryError(f"{key} is {task['status']}: only a rejected branch can be retried")
    return ev.QueueRetried(spec_id=task["spec_id"], task_id=task["task_id"],
                           branch=task["branch"])
