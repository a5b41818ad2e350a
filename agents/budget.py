"""Live budget accounting shared by every agent of a run.

The projections lag the model calls a little (they are written in batches), and several
agents call models at once, so checking the store alone would let concurrent calls overrun a
shared budget. The ledger keeps live totals per scope (run, spec, agent), and every call
reserves its expected size before it is made: a call goes ahead only if what is spent, plus
what is reserved by calls in flight, plus its own estimate stays within every limit. The
estimate is the larger of the agent's previous call and the largest call of the run so far:
cautious, so that a budget is overrun only by a call larger than any seen before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents import events as ev
from agents.config import BudgetsConfig
from agents.store import Store


@dataclass
class _Scope:
    tokens: float = 0.0
    usd: float = 0.0
    reserved_tokens: float = 0.0
    reserved_usd: float = 0.0


class BudgetLedger:
    def __init__(self, store: Store, run_id: str, budgets: BudgetsConfig) -> None:
        self.store = store
        self.run_id = run_id
        self.budgets = budgets
        self.scopes: dict[tuple[str, str], _Scope] = {}
        self.largest_tokens = 0.0
        self.largest_usd = 0.0

    def _scope(self, scope: str, owner: str) -> _Scope:
        key = (scope, owner)
        found = self.scopes.get(key)
        if found is None:
            found = _Scope()
            if scope == "agent":
                row = self.store.get("agents", owner) or {}
                found.tokens = (row.get("tokens_in") or 0) + (row.get("tokens_out") or 0)
                found.usd = row.get("cost") or 0.0
            else:
                row = self.store.get("budgets", f"{scope}:{owner}") or {}
                found.tokens, found.usd = row.get("tokens") or 0, row.get("cost") or 0.0
            self.scopes[key] = found
        return found

    def _scopes(self, spec_id: str, agent_id: str) -> list[tuple[str, _Scope]]:
        return [("agent", self._scope("agent", agent_id)), ("spec", self._scope("spec", spec_id)),
                ("run", self._scope("run", self.run_id))]

    def estimate(self, last_tokens: int, last_usd: float) -> tuple[float, float]:
        return max(last_tokens, self.largest_tokens), max(last_usd, self.largest_usd)

    def reserve(self, spec_id: str, agent_id: str, tokens: float, usd: float) \
            -> ev.BudgetStop | None:
        """Reserve a call's estimate, or say which budget it would exceed."""
        limits = {"agent": self.budgets.agent, "spec": self.budgets.spec,
                  "run": self.budgets.run}
        scopes = self._scopes(spec_id, agent_id)
        for name, scope in scopes:
            limit = limits[name]
            if limit.tokens is not None and \
                    scope.tokens + scope.reserved_tokens + tokens > limit.tokens:
                return ev.BudgetStop(scope=name, measure="tokens",  # type: ignore[arg-type]
                                     limit=limit.tokens, used=scope.tokens)
            if limit.usd is not None and scope.usd + scope.reserved_usd + usd > limit.usd:
                return ev.BudgetStop(scope=name, measure="usd",  # type: ignore[arg-type]
                                     limit=limit.usd, used=round(scope.usd, 6))
        for _, scope in scopes:
            scope.reserved_tokens += tokens
            scope.reserved_usd += usd
        return None

    def settle(self, spec_id: str, agent_id: str, reserved: tuple[float, float],
               tokens: int, usd: float) -> None:
        """Replace a reservation with what the call really used (0 if it failed)."""
        for _, scope in self._scopes(spec_id, agent_id):
            scope.reserved_tokens -= reserved[0]
            scope.reserved_usd -= reserved[1]
            scope.tokens += tokens
            scope.usd += usd
        self.largest_tokens = max(self.largest_tokens, tokens)
        self.largest_usd = max(self.largest_usd, usd)

    def exhausted(self) -> ev.BudgetStop | None:
        """The run budget, if nothing more fits in it."""
        run = self._scope("run", self.run_id)
        limit = self.budgets.run
        if limit.tokens is not None and run.tokens >= limit.tokens:
            return ev.BudgetStop(scope="run", measure="tokens", limit=limit.tokens,
                                 used=run.tokens)
        if limit.usd is not None and run.usd >= limit.usd:
            return ev.BudgetStop(scope="run", measure="usd", limit=limit.usd, used=run.usd)
        return None


class AgentBudget:
    """One agent's view of the ledger, as the runtime uses it."""

    def __init__(self, ledger: BudgetLedger, spec_id: str, agent_id: str) -> None:
        self.ledger = ledger
        self.spec_id = spec_id
        self.agent_id = agent_id

    def reserve(self, last_tokens: int, last_usd: float) \
            -> tuple[ev.BudgetStop | None, tuple[float, float]]:
        estimate = self.ledger.estimate(last_tokens, last_usd)
        return self.ledger.reserve(self.spec_id, self.agent_id, *estimate), estimate

    def settle(self, reserved: tuple[float, float], tokens: int, usd: float) -> None:
        self.ledger.settle(self.spec_id, self.agent_id, reserved, tokens, usd)
