"""Which gates an entry meets, built from the configuration.

Each gate lives in its own module and is imported only when it is switched on, so a run
that does not use policies never loads the Rego engine. A gate's constructor takes the
services it may need (the sandbox for gates that run code, the model router for reviewers).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents import events as ev
from agents.config import FactoryConfig
from agents.errors import FactoryError
from agents.gates.base import Gate
from agents.runtime import Budget
from agents.sandbox.base import Limits, SandboxBackend
from agents.sandbox.quota import Quota

Emit = Callable[[ev.Event], Awaitable[object]]

# name -> "module:Class"; a [gates.command] name is a CommandGate.
BUILTIN = {
    "boundaries": "agents.gates.boundaries:BoundariesGate",
    "overlap": "agents.gates.overlap:OverlapGate",
    "dependencies": "agents.gates.dependencies:DependenciesGate",
    "policy": "agents.gates.policy:PolicyGate",
    "races": "agents.gates.races:RacesGate",
    "review": "agents.gates.review:ReviewGate",
}
COMMAND = "agents.gates.command:CommandGate"


@dataclass
class GateServices:
    """What gates may use. `router`, `store` and `budget` are for the reviewers (agents that
    call models and record their turns); gates that do not need them ignore them. `budget`
    gives a reviewer (spec id, agent id) its share of the run's budget: the ledger every agent
    of the run reserves from, so that reviews are stopped by a spent budget as the agents are,
    and what they spend counts against the agents' room."""

    config: FactoryConfig
    backend: SandboxBackend
    limits: Limits
    test_command: str
    emit: Emit
    quota: Quota | None = None
    router: Any = None
    store: Any = None
    budget: Callable[[str, str], Budget] | None = None


def known_gates(config: FactoryConfig) -> list[str]:
    return [*BUILTIN, *config.gates.command]


def check_names(config: FactoryConfig) -> None:
    """A gate name nobody knows is a configuration error, said before a run starts."""
    known = known_gates(config)
    for name in config.queue.gates:
        if name not in known:
            raise FactoryError(f"[queue] gates: unknown gate {name!r} (expected one of "
                               f"{', '.join(known)}, or a name under [gates.command])")
    clash = set(BUILTIN) & set(config.gates.command)
    if clash:
        raise FactoryError(f"[gates.command]: {', '.join(sorted(clash))} is a built-in "
                           "gate's name; pick another")


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_gates(services: GateServices) -> list[Gate]:
    config = services.config
    check_names(config)
    gates: list[Gate] = []
    for name in config.queue.gates:
        if name in BUILTIN:
            gates.append(_load(BUILTIN[name])(services))
        else:
            gates.append(_load(COMMAND)(services, name, config.gates.command[name]))
    return gates
