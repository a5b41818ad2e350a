"""The offline `replay` model provider: recorded agent trajectories played back through litellm.

A trajectory file (format `factory-replay/1`, documented in specs/README.md) maps an agent's
key (`plan:<spec>` for planners, `<spec>/<task>` for task agents) to the list of assistant
turns it recorded. The turn to play is the number of assistant messages already in the
conversation, so a resumed agent continues exactly where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "factory-replay/1"


@dataclass
class Trajectory:
    name: str
    path: Path
    priced_as: str | None
    latency_ms: float
    agents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


_registry: dict[str, Trajectory] = {}


def load(name: str, path: Path) -> Trajectory:
    """Read and check a trajectory file; errors name the file and the offending entry."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: replay file not found (model replay/{name})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: expected \"format\": \"{FORMAT}\"")
    agents = doc.get("agents")
    if not isinstance(agents, dict):
        raise ValueError(f"{path}: expected an \"agents\" object of key -> list of turns")
    for key, turns in agents.items():
        if not isinstance(turns, list):
            raise ValueError(f"{path}: agents[{key!r}]: expected a list of turns")
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise ValueError(f"{path}: agents[{key!r}][{i}]: expected an object")
            for call in turn.get("tool_calls", []):
                if "name" not in call:
                    raise ValueError(f"{path}: agents[{key!r}][{i}]: tool call without a name")
    trajectory = Trajectory(name, path, doc.get("priced_as"), float(doc.get("latency_ms", 0)),
                            agents)
    _registry[name] = trajectory
    return trajectory


def register(trajectory: Trajectory) -> None:
    _registry[trajectory.name] = trajectory


def get(name: str) -> Trajectory | None:
    return _registry.get(name)


def priced_as(model: str) -> str | None:
    name = model.split("/", 1)[1] if "/" in model else model
    found = _registry.get(name)
    return found.priced_as if found else None
