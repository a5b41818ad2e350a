"""The Textual app: a supervisory console over one factory, through a `FactoryClient`.

Events arrive from the client as committed batches and are only queued; a timer applies
them to the console's model ten times a second and repaints just the visible rows that
changed. That is what keeps a key press quick while thousands of events a second arrive.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.lazy import Lazy
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, OptionList, TabbedContent, TabPane, TextArea

from agents.errors import FactoryError
from agents.textsafe import clean, clean_line
from console.compositor import FactoryScreen
from console.screens import DiffScreen, HelpScreen, QuitScreen, ReasonScreen
from console.settings import remember_theme, remembered_theme, screenshot_dir
from console.themes import DEFAULT_THEME, load_themes
from console.widgets.agents import AgentsPane
from console.widgets.conflicts import ConflictsPane
from console.widgets.queue import QUESTION, InboxPane, QueuePane, is_question
from console.widgets.rows import RowsView
from console.widgets.specs import SpecsPane
from console.widgets.status import RunStatus

if TYPE_CHECKING:  # engine modules load on connect, after the first frame is on screen
    from textual.notifications import SeverityLevel

    from agents.store.store import StoredEvent
    from console.client import FactoryClient
    from console.model import ViewModel

FLUSH_SECONDS = 0.1
# Events are applied in slices of about this long, each on its own turn of the loop, so a
# key press waits for one slice at most; after APPLY_CYCLE of slices the console repaints
# even if more events wait (they follow).
APPLY_SLICE = 0.0003
APPLY_CYCLE = 0.05
# For this long after a key arrives, no slice or repaint starts (they retry every
# KEY_RETRY): the key is handled and its frame painted first.
KEY_QUIET = 0.008
KEY_RETRY = 0.002
# Actions that apply in some panes only (their keys show in the footer there).
PANE_ACTIONS = {"save_spec": ("specs",), "run_spec": ("specs",), "pause": ("agents",),
                "filter": ("agents",), "approve": ("queue", "inbox"),
                "reject": ("queue", "inbox"), "move": ("queue",), "retry": ("queue",),
                "diff": ("queue", "inbox"), "mark": ("inbox",)}
# What an observing console (`factory console --observe`) says to a key that would act; its
# daemon refuses the command too, with the same words.
READ_ONLY = "this console observes: read-only"
# Moving through the agents with a held arrow key loads only the agent it stops on.
TIMELINE_DELAY = 0.12
TABS = ("specs", "agents", "conflicts", "queue", "inbox")
# Where each pane's keys act: a pane key lands here, never in an editor or an input, and
# Escape from an editor or an input comes back here.
PANE_HOME = {"specs": "#spec-list", "agents": "#agents-table", "conflicts": "#pairs-table",
             "queue": "#queue-table", "inbox": "#inbox-table"}


class FactoryApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Factory"
    # The screen's class says how wide the terminal is; app.tcss lays the panes out for it.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (150, "-wide")]
    BINDINGS = [
        # The tabs say their keys ("Specs [1]"): the footer keeps its width for the others.
        Binding("1", "tab('specs')", "Specs", id="tab.specs", show=False),
        Binding("2", "tab('agents')", "Agents", id="tab.agents", show=False),
        Binding("3", "tab('conflicts')", "Conflicts", id="tab.conflicts", show=False),
        Binding("4", "tab('queue')", "Queue", id="tab.queue", show=False),
        Binding("5", "tab('inbox')", "Inbox", id="tab.inbox", show=False),
        Binding("ctrl+s", "save_spec", "Save", id="spec.save", priority=True),
        Binding("ctrl+r", "run_spec", "Run spec", id="spec.run"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit_safely", "Quit", id="quit"),
        # Not a priority binding: a dialog's own Escape comes first; an editor and an input
        # let it through, and it brings the focus back to the pane's table.
        Binding("escape", "leave_input", "Leave", id="leave", show=False),
        Binding("ctrl+q", "quit_safely", "Quit", show=False, priority=True),
        Binding("p", "pause", "Pause", id="timeline.pause", show=False),
        Binding("slash", "filter", "Filter", id="agents.filter", show=False),
        Binding("a", "approve", "Approve", id="queue.approve", show=False),
        Binding("x", "reject", "Reject", id="queue.reject", show=False),
        Binding("left_square_bracket", "move(-1)", "Up", id="queue.up", show=False),
        Binding("right_square_bracket", "move(1)", "Down", id="queue.down", show=False),
        Binding("r", "retry", "Retry", id="queue.retry", show=False),
        Binding("v", "diff", "Diff", id="queue.diff", show=False),
        Binding("space", "mark", "Mark", id="inbox.mark", show=False),
        # Moving through a table is handled here, as the key reaches the app, rather than
        # after it has been passed on to the screen and then to the table (each hop waits
        # its turn on the loop behind whatever is being applied or painted).
        Binding("up", "rows_cursor(-1)", show=False, priority=True),
        Binding("down", "rows_cursor(1)", show=False, priority=True),
    ]

    def __init__(self, client: FactoryClient | None = None, *,
                 connect: Callable[[], Awaitable[Any]] | None = None,
                 theme: str | None = None, start_run: bool = False,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        """Give a client, or `connect` to open one on the app's own loop (which the app
        then closes when it ends)."""
        super().__init__()
        if client is None and connect is None:
            raise ValueError("FactoryApp needs a client or a way to connect")
        self.client: Any = client
        self._connect = connect
        self.requested_theme = theme
        self.start_run = start_run
        self.flush_seconds = flush_seconds
        self.model: ViewModel | None = None
        self._unfollow: Any = None
        self._last_header = 0.0
        self._applying = False
        self._client_closed = False
        self._key_at = 0.0
        self.first_frame_at: float | None = None
        self.first_frame_wall: float | None = None
        self.data_frame_wall: float | None = None  # the first frame showing the factory's state
        self.connect_error: FactoryError | None = None
        self.detached: str | None = None  # why an attached console lost its daemon
        self.flushed_hooks: list[Any] = []  # benchmarks: called after a flush is painted

    # -- building ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield RunStatus(id="status")
        with TabbedContent(initial="specs", id="tabs"):
            with TabPane("Specs [1]", id="specs"):
                yield SpecsPane(id="specs-pane")
            # The hidden panes are mounted just after the first frame (Lazy): styling all
            # their widgets up front would hold that frame back.
            with TabPane("Agents [2]", id="agents"):
                yield Lazy(AgentsPane(id="agents-pane"))
            with TabPane("Conflicts [3]", id="conflicts"):
                yield Lazy(ConflictsPane(self, id="conflicts-pane"))
            with TabPane("Queue [4]", id="queue"):
                yield Lazy(QueuePane(self, id="queue-pane"))
            with TabPane("Inbox [5]", id="inbox"):
                yield Lazy(InboxPane(self, id="inbox-pane"))
        yield Footer()

    def get_default_screen(self) -> Screen[Any]:
        return FactoryScreen(id="_default")

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        """The panes' view of the projections (empty until the snapshot arrives)."""
        return self.model.rows(table) if self.model is not None else {}

    async def on_mount(self) -> None:
        themes, errors = load_themes()
        for theme in themes:
            self.register_theme(theme)
        for error in errors:
            self.notify(error, title="theme skipped", severity="warning", timeout=10)
        self._pick_theme([t.name for t in themes])
        self.query_one(RunStatus).connecting()
        # Paint the console first, then connect: opening the engine (its modules, the store,
        # git) takes longer than drawing the screen, and a person should see it start.
        self.call_after_refresh(self._first_frame)
        self.call_after_refresh(lambda: self.run_worker(self._open, group="connect"))

    async def _open(self) -> None:
        if self.client is None:
            assert self._connect is not None
            try:
                self.client = await self._connect()
            except FactoryError as exc:
                self.connect_error = exc
                self.exit(return_code=1)  # the command prints the error once the screen is gone
                return
        from console.model import ViewModel

        if hasattr(self.client, "on_lost"):
            self.client.on_lost = self._lost
            self.client.on_reconnected = self._reconnected
        if hasattr(self.client, "on_notify"):  # the factory wants a person: ring
            from console.alerts import Ringer

            self.client.on_notify = Ringer(self)
        # The Lazy panes mount just after the first frame; Lazy offers no event to wait on.
        while not self.query(InboxPane) or not self.query(AgentsPane):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        snap = await self.client.snapshot()
        self.model = ViewModel.from_snapshot(snap)
        self._unfollow = self.client.follow(self.model.receive)
        self.refill_all()
        # What is loaded now (the engine, its state, the snapshot) lives as long as the
        # console: keep it out of the collector's passes, and collect young objects in
        # larger, rarer rounds. Under 5,000 events a second the default settings stopped
        # the console for 100 ms or more every few seconds (full passes over this state).
        gc.freeze()
        gc.set_threshold(20_000, 50, 1000)
        self._show_header(force=True)
        self.refresh_bindings()  # the panes' keys apply now that there is something to act on
        self.set_interval(self.flush_seconds, self.flush)
        self.load_specs()
        self.call_after_refresh(self._data_frame)
        if self.start_run:
            await self._command(self.client.run(), "run started")

    def on_resize(self, event: events.Resize) -> None:
        """A narrow terminal gets the compact footer: every key still fits, none is cut."""
        for footer in self.query(Footer):
            footer.compact = event.size.width < 100

    def _first_frame(self) -> None:
        self.first_frame_at = time.perf_counter()
        self.first_frame_wall = time.time()

    def _data_frame(self) -> None:
        self.data_frame_wall = time.time()

    def _pick_theme(self, names: list[str]) -> None:
        """--theme wins and is remembered for next time; else the remembered one."""
        wanted = self.requested_theme or remembered_theme() or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.notify(f"no theme {wanted!r}; available: {', '.join(sorted(names))}",
                        severity="warning")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        elif self.requested_theme:
            remember_theme(wanted)
        self.theme = wanted

    def watch_theme(self, name: str) -> None:
        if self.model is not None:  # a choice made in the running app, not the start-up one
            remember_theme(name)

    async def on_unmount(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
        if self._connect is not None and self.client is not None and not self._client_closed:
            self._client_closed = True
            await self.client.close()

    # -- keeping current ---------------------------------------------------------------------

    def refill_all(self) -> None:
        assert self.model is not None
        self.query_one(AgentsPane).refill(self.model.rows("agents"))
        self.query_one(ConflictsPane).refill()
        self.query_one(QueuePane).refill()
        self.query_one(InboxPane).refill()

    def flush(self) -> None:
        """Apply what arrived and repaint what it changed, ten times a second.

        Applying is cut into slices of APPLY_SLICE with the loop free in between, and the
        repaint into rows, timeline and header; none of these steps starts just after a
        key press. A burst of events still costs one repaint."""
        model = self.model
        if model is None or self._applying or not self._live():
            return  # not connected yet, closing, or the slices of the last flush still run
        if not model.pending:
            self._when_quiet(self._repaint_timeline)  # what the last flush held back
            self._when_quiet(self._repaint_header)
            return
        self._applying = True
        self._when_quiet(self._apply_slices, time.perf_counter(), model.applied)

    def post_message(self, message: Message) -> bool:
        if isinstance(message, events.Key):
            self._key_at = time.perf_counter()
        return super().post_message(message)

    def _when_quiet(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of applying or repainting on a later turn of the loop, once no key
        has arrived for KEY_QUIET: a key that comes meanwhile is handled and painted first,
        and waits at most for the one step already running."""
        asyncio.get_running_loop().call_soon(self._quiet_step, step, args)

    def _quiet_step(self, step: Callable[..., None], args: tuple[Any, ...]) -> None:
        # Checked as the step is about to run, not when it was queued: a key that arrived in
        # between is already queued behind it, and should not wait for it.
        if time.perf_counter() - self._key_at < KEY_QUIET:
            asyncio.get_running_loop().call_later(KEY_RETRY, self._quiet_step, step, args)
        else:
            step(*args)

    def _live(self) -> bool:
        """Still on screen: the panes go away while the app closes, and a step of applying
        or repainting may come after that."""
        return self.is_running and not self._closing and bool(self._screen_stack)

    def _apply_slices(self, started: float, before: int) -> None:
        model = self.model
        if model is None or not self._live():
            self._applying = False
            return
        model.apply(APPLY_SLICE)
        if model.pending and time.perf_counter() - started < APPLY_CYCLE:
            self._when_quiet(self._apply_slices, started, before)
            return
        self._repaint_rows(before)
        self._when_quiet(self._repaint_timeline)
        self._when_quiet(self._repaint_header)

    def _repaint_rows(self, before: int) -> None:
        model = self.model
        assert model is not None
        self._applying = False
        if model.pending:  # more than a cycle's worth queued: carry on after this frame
            self.call_after_refresh(self.flush)
        agents = self.query_one(AgentsPane)
        table = agents.table
        with self.batch_update():
            changed = model.take_changed("agents")
            if not all(map(table.has, changed)):
                agents.refill(model.rows("agents"))
            elif changed:
                table.rows_changed(changed)
            entries = model.take_changed("queue")
            # The chain's links and test runs, and the queue's own row, feed its pane.
            for table in ("links", "test_runs", "queue_state", "flaky_tests"):
                entries |= model.take_changed(table)
            asked = model.take_changed("questions")
            # Task and gate rows only feed columns of queue entries (tokens, verdicts):
            # repaint those rows, no re-sort.
            shown = model.take_changed("tasks") | {
                key.rsplit(":", 1)[0] for key in model.take_changed("gates")}
            for pane in (self.query_one(QueuePane), self.query_one(InboxPane)):
                if entries or (asked and isinstance(pane, InboxPane)):
                    pane.refill()
                elif shown:
                    pane.table.rows_changed(shown)
                    if isinstance(pane, QueuePane) and pane.table.selected_key in shown:
                        pane.show_findings()
            if model.take_changed("conflicts") | model.take_changed("branches"):
                self.query_one(ConflictsPane).refill()
        if self.flushed_hooks and model.applied > before:
            self.call_after_refresh(self._painted, model.newest_ts)

    def _repaint_timeline(self) -> None:
        model = self.model
        if model is None or not self._live():
            return
        timeline = self.query_one(AgentsPane).timeline
        if timeline.agent_id == model.followed:  # else its history is still loading
            timeline.add(model.take_followed())
        timeline.write_due()

    def _repaint_header(self) -> None:
        if self._live():
            self._show_header()

    def _painted(self, newest: float) -> None:
        for hook in self.flushed_hooks:
            hook(newest)

    def _lost(self, reason: str) -> None:
        """The daemon went away: what is on screen stays, marked as no longer current."""
        self.detached = reason
        if getattr(self.client, "reconnect", False):
            self.query_one(RunStatus).detached(f"{reason}; reconnecting")
            self.notify(f"{reason}; what you see is no longer current. Reconnecting when "
                        "the daemon is back.", severity="error", timeout=30)
            return
        self.query_one(RunStatus).detached(reason)
        self.notify(f"{reason}; what you see is no longer current. Quit and run "
                    "`factory console` again to attach.", severity="error", timeout=30)

    def _reconnected(self, snap: Any) -> None:
        """Attached again (the daemon restarted): its state replaces what was shown, and the
        rows that follow apply to that."""
        from console.model import ViewModel

        if self.model is None:  # lost before the first snapshot: _open carries on
            return
        followed = self.model.followed
        if self._unfollow is not None:
            self._unfollow()
        self.model = ViewModel.from_snapshot(snap)
        self._unfollow = self.client.follow(self.model.receive)
        self.detached = None
        self.refill_all()
        self._show_header(force=True)
        if followed is not None:  # its events while the daemon was away, then the new ones
            self.load_timeline(followed)
        self.notify(f"reconnected: {snap.engine}; showing its current state", timeout=8)

    def _show_header(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.model is None or self.detached is not None or self._client_closed or \
                (not force and now - self._last_header < 0.25):
            return
        self._last_header = now
        m = self.model
        self.query_one(RunStatus).show(m.totals(), m.budget_tokens, m.budget_usd, m.sandbox,
                                       m.engine, m.lag())

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every notification: what it quotes (an engine's error, a key, a reason, an agent)
        is made inert, and it is plain text unless a caller asks for markup."""
        super().notify(clean(message), title=clean_line(title), severity=severity,
                       timeout=timeout, markup=markup)

    # -- commands, one way for all: errors a person can act on become notifications -----

    async def _command(self, call: Awaitable[Any], done: str | None = None) -> bool:
        try:
            await call
        except FactoryError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return False
        if done:
            self.notify(done, timeout=3)
        return True

    def _observing(self) -> bool:
        """An observer's key that would act says so at once, before any dialog opens."""
        if not getattr(self.client, "observe", False):
            return False
        self.notify(READ_ONLY, severity="warning", timeout=5)
        return True

    def _tab(self) -> str:
        return str(self.query_one(TabbedContent).active)

    def action_tab(self, tab: str) -> None:
        """Show a pane with the focus on its list, never in its editor or input: the next
        digit or Tab then acts as a key, it is not typed into a spec or a filter."""
        self.query_one(TabbedContent).active = tab
        self._focus_home(tab)

    def _focus_home(self, tab: str) -> None:
        for widget in self.query(PANE_HOME[tab]):  # absent for a moment after start (Lazy)
            widget.focus()

    def action_leave_input(self) -> None:
        if isinstance(self.focused, (Input, TextArea)) and self.screen is self.screen_stack[0]:
            self._focus_home(self._tab())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Show each pane's keys in the footer only where they apply. The footer asks for
        every binding each time it is composed, so answer without walking the DOM when
        the action belongs to no pane."""
        if action == "rows_cursor":  # otherwise the key goes on to the focused widget
            return isinstance(self.focused, RowsView) and self.screen is self.screen_stack[0]
        where = PANE_ACTIONS.get(action)
        if where is None:
            return True
        if self.model is None:  # not connected: the panes are empty
            return False
        return self._tab() in where

    def action_rows_cursor(self, delta: int) -> None:
        focused = self.focused
        if isinstance(focused, RowsView):
            focused.action_cursor(delta)

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()
        if self.model is not None and self._tab() == "agents":
            # The highlighted agent's story shows as soon as the pane does, not on a first move.
            pane = self.query_one(AgentsPane)
            key = pane.table.selected_key
            if key is not None and key != pane.timeline.agent_id:
                self.load_timeline(key)

    # -- specs -------------------------------------------------------------------------------

    @work(exclusive=True, group="specs", exit_on_error=False)
    async def load_specs(self) -> None:
        pane = self.query_one(SpecsPane)
        files = await self.client.spec_files()
        pane.set_files(files)
        if files and pane.current is None:
            pane.open(files[0].path)

    @on(OptionList.OptionSelected, "#spec-list")
    def _open_spec(self, event: OptionList.OptionSelected) -> None:
        pane = self.query_one(SpecsPane)
        path = Path(str(event.option.id))
        if pane.dirty and pane.current and pane.current.path != path:
            self.notify("save (ctrl+s) before opening another spec", severity="warning")
            return
        pane.open(path)
        pane.editor.focus()  # enter on a spec: to edit it (escape comes back to the list)

    @on(OptionList.OptionSelected, "#lint")
    def _jump(self, event: OptionList.OptionSelected) -> None:
        self.query_one(SpecsPane).jump_to(event.option_index)

    async def action_save_spec(self) -> None:
        if self._observing():
            return
        pane = self.query_one(SpecsPane)
        if pane.current is None:
            self.notify("no spec open", severity="warning")
            return
        if pane.locked:
            self.notify(f"{pane.current.path.name} holds control characters and is shown "
                        "read-only: edit it outside the console", severity="warning")
            return
        text = pane.editor.text
        try:
            findings = await self.client.save_spec(pane.current.path, text)
        except FactoryError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        pane.saved(text, findings)
        self.notify(f"saved {pane.current.path.name} ({len(findings)} lint finding(s))")

    async def action_run_spec(self) -> None:
        if self._observing():
            return
        pane = self.query_one(SpecsPane)
        if pane.current is None:
            return
        if pane.dirty:
            self.notify("save the spec first (ctrl+s)", severity="warning")
            return
        from agents.specs import parse_spec

        try:
            spec_id = parse_spec(pane.current.text, pane.current.path).id
        except FactoryError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        await self._command(self.client.run([spec_id]), f"run of {spec_id} started")

    async def action_run_all(self) -> None:
        if self.client is None:
            self.notify("still connecting to the factory", severity="warning")
            return
        if self._observing():
            return
        await self._command(self.client.run(None), "run started")

    # -- agents ------------------------------------------------------------------------------

    @on(RowsView.Selected, "#agents-table")
    def _agent_selected(self, event: RowsView.Selected) -> None:
        if event.key is not None and event.key != self.query_one(AgentsPane).timeline.agent_id:
            self.load_timeline(event.key)

    @work(exclusive=True, group="timeline", exit_on_error=False)
    async def load_timeline(self, agent_id: str) -> None:
        await asyncio.sleep(TIMELINE_DELAY)  # a newer selection cancels this one meanwhile
        if self.model is not None:  # from now on, its events are kept as they are applied
            self.model.follow_agent(agent_id)
            await self.client.follow_agent(agent_id)
        history: list[StoredEvent] = []
        after = 0
        while True:  # the newest lines are the ones kept; read all, the widget caps them
            chunk = await self.client.events(after, 5000, agent_id)
            history.extend(chunk)
            if len(chunk) < 5000:
                break
            after = chunk[-1].id
        self.query_one(AgentsPane).timeline.show_history(agent_id, history[-3000:])

    def action_pause(self) -> None:
        pane = self.query_one(AgentsPane)
        pane.set_paused(not pane.timeline.paused)

    def action_filter(self) -> None:
        self.query_one("#agent-filter", Input).focus()

    @on(Input.Changed, "#agent-filter")
    def _filter(self) -> None:
        self.query_one(AgentsPane).refill(self.rows("agents"))

    @on(Input.Submitted, "#agent-filter")
    def _filter_done(self) -> None:
        self.query_one(AgentsPane).table.focus()

    @on(RowsView.Activated, "#agents-table")
    def _agent_activated(self, event: RowsView.Activated) -> None:
        if event.key is not None:
            self.load_timeline(event.key)

    # -- queue and inbox ---------------------------------------------------------------------

    def _selected_entry(self) -> str | None:
        tab = self._tab()
        pane: QueuePane | InboxPane = self.query_one(QueuePane) if tab == "queue" else \
            self.query_one(InboxPane)
        key = pane.table.selected_key
        if key is None:
            self.notify("no entry selected", severity="warning")
        return key

    async def action_approve(self) -> None:
        if self._observing():
            return
        keys: Iterable[str]
        if self._tab() == "inbox" and self.query_one(InboxPane).table.marked:
            keys = sorted(self.query_one(InboxPane).table.marked)
        else:
            key = self._selected_entry()
            if is_question(key):
                self._ask_answer(str(key))
                return
            keys = [key] if key else []
        approved = 0
        for key in keys:
            approved += await self._command(self.client.approve(key))
        self.query_one(InboxPane).table.clear_marks()
        if approved:
            self.notify(f"approved {approved} entr{'y' if approved == 1 else 'ies'}")

    def _ask_answer(self, key: str) -> None:
        row = self.query_one(InboxPane).table.rows.get(key)
        if row is None:
            return
        question_id = key[len(QUESTION):]

        async def answered(text: str | None) -> None:
            if text:
                await self._command(self.client.answer(question_id, text),
                                    f"answered {row['agent_id']}")

        self.push_screen(ReasonScreen(
            f"{row['agent_id']} ({row['task_key']}) asks:\n{row['question']}",
            placeholder="your answer, or an option's number", ok="Answer",
            empty="an answer cannot be empty", choices=list(row["options"] or [])), answered)

    def action_reject(self) -> None:
        if self._observing():
            return
        key = self._selected_entry()
        if key is None:
            return
        if is_question(key):
            self.notify("a question is answered (a), not rejected", severity="warning")
            return

        async def rejected(reason: str | None) -> None:
            if reason:
                await self._command(self.client.reject(key, reason), f"rejected {key}")

        self.push_screen(ReasonScreen(f"Reject {key}: why?"), rejected)

    async def action_move(self, delta: int) -> None:
        if self._observing():
            return
        key = self._selected_entry()
        if key is not None:
            await self._command(self.client.move(key, delta))

    async def action_retry(self) -> None:
        if self._observing():
            return
        key = self._selected_entry()
        if key is not None:
            await self._command(self.client.retry(key), f"{key} queued again")

    async def action_diff(self) -> None:
        key = self._selected_entry()
        if key is None:
            return
        if is_question(key):
            key = self.query_one(InboxPane).table.rows[key]["task_key"]
        try:
            diff = await self.client.diff(key)
        except FactoryError as exc:
            self.notify(str(exc), severity="error")
            return
        self.push_screen(DiffScreen(f"diff of {key} (esc closes)", diff))

    @on(RowsView.Selected, "#inbox-table")
    def _inbox_selected(self) -> None:
        self.query_one(InboxPane).show_detail()

    @on(RowsView.Selected, "#queue-table")
    def _queue_selected(self) -> None:
        self.query_one(QueuePane).show_findings()

    @on(RowsView.Activated, "#inbox-table")
    @on(RowsView.Activated, "#queue-table")
    async def _entry_activated(self, event: RowsView.Activated) -> None:
        """Enter: answer the highlighted question, or show the highlighted entry's diff."""
        if is_question(event.key):
            self._ask_answer(str(event.key))
        elif event.key is not None:
            await self.action_diff()

    def action_mark(self) -> None:
        table = self.query_one(InboxPane).table
        key = table.selected_key
        if is_question(key):
            self.notify("questions are answered one at a time (a)", severity="warning")
        elif key is not None:
            table.toggle_mark(key)
            table.action_cursor(1)

    # -- conflicts ---------------------------------------------------------------------------

    @on(RowsView.Selected, "#pairs-table")
    @on(RowsView.Activated, "#pairs-table")
    def _pair_selected(self, event: RowsView.Selected | RowsView.Activated) -> None:
        if event.key is not None:
            self.load_hunks(event.key)

    @work(exclusive=True, group="hunks", exit_on_error=False)
    async def load_hunks(self, pair: str) -> None:
        row = self.rows("conflicts").get(pair)
        if row is None:
            return
        pane = self.query_one(ConflictsPane)
        if row["status"] != "conflict":
            pane.show_hunks(pair, {})
            return
        try:
            hunks = await self.client.conflict_hunks(row["a"], row["b"])
        except FactoryError as exc:
            pane.show_hunks(pair, {"error": str(exc)})
            return
        pane.show_hunks(pair, hunks)

    # -- help, palette, quitting -----------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_quit_safely(self) -> None:
        if self.query_one(SpecsPane).dirty:
            def answer(quit_anyway: bool | None) -> None:
                if quit_anyway:
                    self._quit()

            self.push_screen(QuitScreen(), answer)
        else:
            self._quit()

    def _quit(self) -> None:
        """Close what this console opened while it is still on screen: stopping an engine
        (its own process, or in this one) waits for the agents' current steps, seconds in
        which a blank terminal would say nothing."""
        if self._connect is None or self.client is None or self._client_closed:
            self.exit()
            return
        if hasattr(self.client, "engine") or hasattr(self.client, "factory"):
            self.query_one(RunStatus).stopping()
        self._client_closed = True
        self.run_worker(self._close_and_exit(), group="quit", exclusive=True)

    async def _close_and_exit(self) -> None:
        try:
            await self.client.close()
        finally:
            self.exit()

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """Screenshots go to the configured folder or the current one (Textual's default,
        ~/Downloads, is missing on many machines and the save then fails)."""
        folder = Path(path) if path else screenshot_dir()
        self._screenshot_folder = folder
        return super().deliver_screenshot(filename, str(folder), time_format)

    @on(events.DeliveryComplete)
    def _on_delivery_complete(self, event: events.DeliveryComplete) -> None:
        if event.name == "screenshot":
            event.prevent_default()  # Textual's own note quotes the path as markup
            where = event.path or getattr(self, "_screenshot_folder", Path.cwd())
            self.notify(f"saved to {where}", title="Screenshot", timeout=8)

    @on(events.DeliveryFailed)
    def _on_delivery_failed(self, event: events.DeliveryFailed) -> None:
        if event.name == "screenshot":
            event.prevent_default()
            folder = getattr(self, "_screenshot_folder", Path.cwd())
            self.notify(f"could not save in {folder}: {event.exception}", title="Screenshot",
                        severity="error", timeout=10)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for tab in TABS:
            yield SystemCommand(f"Go to {tab}", f"Show the {tab} pane",
                                lambda tab=tab: self.action_tab(tab))
        actions = [
            ("Save spec", "Write the open spec (ctrl+s)", self.action_save_spec),
            ("Run or re-plan spec", "Run the open spec (ctrl+r)", self.action_run_spec),
            ("Run all specs", "Start a run of every spec", self.action_run_all),
            ("Pause or follow timeline", "Stop or resume following (p)", self.action_pause),
            ("Filter agents", "Filter by state, spec or text (/)", self.action_filter),
            ("Approve", "Approve the selected or marked entries (a)", self.action_approve),
            ("Reject", "Reject the selected entry with a reason (x)", self.action_reject),
            ("Move entry up", "Land it sooner ([)", lambda: self.action_move(-1)),
            ("Move entry down", "Land it later (])", lambda: self.action_move(1)),
            ("Retry entry", "Queue a rejected entry again (r)", self.action_retry),
            ("View diff", "The entry's diff (v)", self.action_diff),
            ("Help", "Keys and panes (?)", self.action_help),
        ]
        for title, help_text, callback in actions:
            yield SystemCommand(title, help_text, callback)
        for name in sorted(self.available_themes):
            if name.startswith("factory-"):
                yield SystemCommand(f"Theme: {name}", "Switch and remember this theme",
                                    lambda name=name: setattr(self, "theme", name))
