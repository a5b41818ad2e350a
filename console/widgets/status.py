"""The header line: what the run is doing and what it has cost, against its budget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from agents.textsafe import clean_line
from console import format as fmt

if TYPE_CHECKING:
    from console.model import Totals


class RunStatus(Static):
    DEFAULT_CSS = """
    RunStatus { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def connecting(self) -> None:
        self.update(Text.assemble((" CONNECTING ", "bold reverse"), "  opening the factory…"),
                    layout=False)

    def stopping(self) -> None:
        self.update(Text.assemble((" STOPPING ", "bold reverse"), "  the engine finishes its "
                                  "agents' current steps; every committed step is kept…"),
                    layout=False)

    def detached(self, reason: str) -> None:
        self.update(Text.assemble((" DETACHED ", "bold reverse red"), f"  {clean_line(reason)}"),
                    layout=False)

    def show(self, t: Totals, budget_tokens: int | None, budget_usd: float | None,
             sandbox: str, engine: str, lag: float) -> None:
        text = Text()
        # The run's status and where the engine runs come from the store or a daemon:
        # made inert too (a few strings, at most four times a second).
        text.append(f" {clean_line(t.run_status.upper())} ", style="bold reverse")
        if engine:
            text.append(f"  {clean_line(engine)}", style="dim")
        text.append(f"  agents {t.agents_active} active/{t.agents_total}")
        text.append(f"  tasks {t.tasks_done}/{t.tasks_total}")
        tok = fmt.tokens(t.tokens) + (f"/{fmt.tokens(budget_tokens)}" if budget_tokens else "")
        cost = fmt.usd(t.usd) + (f"/{fmt.usd(budget_usd)}" if budget_usd else "")
        text.append(f"  tokens {tok}  {cost}")
        text.append(f"  landed {t.landed}", style="green")
        text.append(f"  rejected {t.rejected}", style="red")
        rate = t.merge_rate
        text.append(f"  merge rate {rate:.0%}" if rate is not None else "  merge rate -")
        if t.awaiting:
            text.append(f"  approvals {t.awaiting}", style="bold yellow")
        if t.questions:
            text.append(f"  questions {t.questions}", style="bold magenta")
        if sandbox == "none":
            text.append("  UNSANDBOXED", style="bold red reverse")
        elif sandbox:
            text.append(f"  sandbox {clean_line(sandbox)}", style="dim")
        if lag > 1:
            text.append(f"  lag {lag:.1f}s", style="yellow")
        self.update(text, layout=False)  # one line, always: no layout pass
