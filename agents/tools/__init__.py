"""The tools an agent may call, their argument schemas, and the one entry point `call_tool`."""

from agents.tools.registry import TOOL_SPECS, ToolContext, ToolOutcome, call_tool, tool_specs

__all__ = ["TOOL_SPECS", "ToolContext", "ToolOutcome", "call_tool", "tool_specs"]
