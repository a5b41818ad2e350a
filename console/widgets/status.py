"""The header line: what the run is doing and what it has cost, against its budget.

It is one line at any width. Each item has a full and a short form; when the full line does
not fit, the short forms are used, and if that is still too wide the least important items
go (the engine's place, the sandbox's name, the merge rate...), never the run's state, its
counts, what waits for a person or the money.

It also says how much disk the factory takes (.factory/: the store, worktrees, scratch),
so a person sees when `factory gc` is due. Measuring walks every file of every worktree, so
it runs in a thread, every DISK_EVERY seconds, never on a frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from agents.textsafe import clean_line
from console import format as fmt

if TYPE_CHECKING:
    from console.model import Totals


@dataclass(frozen=True)
class Item:
    full: str
    short: str
    style: str = ""
    rank: int = 0  # 0: always shown; otherwise dropped when narrow, highest first


def items(t: Totals, budget_tokens: int | None, budget_usd: float | None, sandbox: str,
          engine: str, lag: float) -> list[Item]:
    # The run's status and where the engine runs come from the store or a daemon: made inert.
    status = clean_line(t.run_status.upper())
    tok = fmt.tokens(t.tokens) + (f"/{fmt.tokens(budget_tokens)}" if budget_tokens else "")
    cost = fmt.usd(t.usd) + (f"/{fmt.usd(budget_usd)}" if budget_usd else "")
    short_cost = f"${t.usd or 0:.2f}" + (f"/${budget_usd:.2f}" if budget_usd else "")
    out = [Item(f" {status} ", f" {status} ", "bold reverse")]
    if engine:
        out.append(Item(clean_line(engine), clean_line(engine), "dim", rank=9))
    rate = t.merge_rate
    out += [
        Item(f"agents {t.agents_active} active/{t.agents_total}",
             f"agents {t.agents_active}/{t.agents_total}"),
        Item(f"tasks {t.tasks_done}/{t.tasks_total}", f"tasks {t.tasks_done}/{t.tasks_total}"),
        Item(f"tokens {tok}", f"tok {tok}", rank=4),
        Item(cost, short_cost),
        Item(f"landed {t.landed}", f"✓{t.landed}", "green", rank=3),
        Item(f"rejected {t.rejected}", f"✗{t.rejected}", "red", rank=3),
        Item(f"merge rate {rate:.0%}" if rate is not None else "merge rate -",
             f"merge {rate:.0%}" if rate is not None else "merge -", rank=6),
    ]
    if t.awaiting:
        out.append(Item(f"approvals {t.awaiting}", f"appr {t.awaiting}", "bold yellow"))
    if t.questions:
        out.append(Item(f"questions {t.questions}", f"ask {t.questions}", "bold magenta"))
    if sandbox == "none":
        out.append(Item("UNSANDBOXED", "UNSANDBOXED", "bold red reverse"))
    elif sandbox:
        out.append(Item(f"sandbox {clean_line(sandbox)}", clean_line(sandbox), "dim", rank=8))
    if lag > 1:
        out.append(Item(f"lag {lag:.1f}s", f"lag {lag:.0f}s", "yellow", rank=2))
    return out


def fit(all_items: list[Item], width: int) -> Text:
    """The fullest line that fits in `width`."""
    def line(chosen: list[Item], short: bool, gap: str) -> Text:
        text = Text()
        for n, item in enumerate(chosen):
            if n:
                text.append(gap)
            text.append(item.short if short else item.full, style=item.style)
        return text

    chosen = list(all_items)
    for short, gap in ((False, "  "), (True, "  "), (True, " ")):
        if line(chosen, short, gap).cell_len <= width:
            return line(chosen, short, gap)
    while any(i.rank for i in chosen):
        chosen.remove(max(reversed(chosen), key=lambda i: i.rank))
        if line(chosen, True, " ").cell_len <= width:
            break
    return line(chosen, True, " ")


class RunStatus(Static):
    DEFAULT_CSS = """
    RunStatus { height: 1; background: $panel; color: $text; padding: 0 1;
                text-wrap: nowrap; text-overflow: ellipsis; }
    """

    # Seconds between measurements of .factory/, and before the first one (after the first
    # totals are shown: the console's first frames come before any disk walk).
    DISK_EVERY = 30.0
    DISK_FIRST = 10.0

    _items: list[Item] | None = None
    _disk: Item | None = None
    _disk_started = False

    def connecting(self) -> None:
        self._items = None
        self.update(Text.assemble((" CONNECTING ", "bold reverse"), "  opening the factory…"),
                    layout=False)

    def stopping(self) -> None:
        self._items = None
        self.update(Text.assemble((" STOPPING ", "bold reverse"), "  the engine finishes its "
                                  "agents' current steps; every committed step is kept…"),
                    layout=False)

    def detached(self, reason: str) -> None:
        self._items = None
        self.update(Text.assemble((" DETACHED ", "bold reverse red"), f"  {clean_line(reason)}"),
                    layout=False)

    def show(self, t: Totals, budget_tokens: int | None, budget_usd: float | None,
             sandbox: str, engine: str, lag: float) -> None:
        self._items = items(t, budget_tokens, budget_usd, sandbox, engine, lag)
        self._paint()
        if not self._disk_started:
            self._disk_started = True
            self.set_timer(self.DISK_FIRST, self._measure_disk)
            self.set_interval(self.DISK_EVERY, self._measure_disk)

    def _measure_disk(self) -> None:
        root = getattr(getattr(self.app, "client", None), "root", None)
        if isinstance(root, Path):
            self.run_worker(lambda: self._disk_of(root / ".factory"), thread=True,
                            exclusive=True, group="disk", exit_on_error=False)

    def _disk_of(self, folder: Path) -> None:
        from agents.gc import disk_bytes, human_bytes  # light: no pydantic, no git

        if folder.is_dir():
            size = human_bytes(disk_bytes(folder))
            self.app.call_from_thread(self._disk_measured, size)

    def _disk_measured(self, size: str) -> None:
        self._disk = Item(f"disk {size}", size.replace(" ", ""), "dim", rank=7)
        if self._items is not None:
            self._paint()

    def on_resize(self) -> None:
        if self._items is not None:
            self._paint()

    def _paint(self) -> None:
        assert self._items is not None
        width = self.content_region.width or self.app.size.width - 2
        shown = self._items + ([self._disk] if self._disk is not None else [])
        self.update(fit(shown, width), layout=False)  # one line, always: no layout
