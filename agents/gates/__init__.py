"""The queue's gates (agents/gates/base.py says what a gate is) and the order they run in."""

from __future__ import annotations

from agents.gates.base import Change, Finding, Gate, GateInput, GateVerdict, Verdict, worst

__all__ = ["Change", "Finding", "Gate", "GateInput", "GateVerdict", "Verdict", "worst"]
