"""The `factory` command.

Every command that could open a screen also works headless (`--headless`, or automatically
when stdout is not a terminal). Errors a person can act on are printed plainly, without a
traceback, and exit with status 2.

What agents, models, test runs and branches wrote (reasons, names, summaries, spec text) is
printed as `Text`, never inside a markup string, and made inert first (`agents.textsafe`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agents.errors import FactoryError
from agents.serving import served, socket_path
from agents.textsafe import clean, clean_line

CONFIG_NAME = ".factory.toml"
out = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
err = Console(stderr=True, highlight=False)


def _root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    from agents.config import find_config

    found = find_config(Path.cwd())
    if found is None:
        raise FactoryError(f"no {CONFIG_NAME} here or in any parent folder "
                           "(run `factory init` first)")
    return found.parent


def _headless(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "headless", False)) or not sys.stdout.isatty()


# -- commands --------------------------------------------------------------------------------


def _place(args: argparse.Namespace, default: str) -> Path:
    """PATH or --root (they mean the same for `init` and `demo`), said once."""
    if args.path is not None and args.root is not None and \
            Path(args.path).resolve() != Path(args.root).resolve():
        raise FactoryError(f"two places given ({args.path} and --root {args.root}): give one")
    return Path(args.root or args.path or default)


def cmd_init(args: argparse.Namespace) -> int:
    """Writes a configuration for this repository, then checks it as `factory doctor` would:
    a first `factory run` should find nothing left to set but what is printed here."""
    from agents import init
    from agents.config import load_config

    root = _place(args, ".").resolve()
    if (root / CONFIG_NAME).exists():
        raise FactoryError(f"{root / CONFIG_NAME}: already exists; not overwriting it "
                           "(`factory doctor` checks it)")
    key_env, api_base = _init_key_env(args.key_env), _init_api_base(args.api_base)
    model = args.model if args.model is not None else _ask_model()
    detection = init.detect(root)
    command, because = args.test_command, "given with --test-command"
    if command is None and detection.found:
        command, because = detection.found[0].command, detection.found[0].because
    choices = init.Choices(model=model.strip(), key_env=key_env, api_base=api_base,
                           test_command=command, because=because,
                           main_branch=init.main_branch(root))
    for path in init.write(root, init.config_text(choices, detection)):
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        out.print(Text(f"wrote {clean_line(str(shown))}"))
    config = load_config(root / CONFIG_NAME)
    report = asyncio.run(init.check(config, run_tests=command is not None))
    todo: list[str] = []
    if not choices.model:
        todo.append("name a model for [models] planner, implementer and reviewer in "
                    f"{CONFIG_NAME} (e.g. \"openai/gpt-4o-mini\"; `factory init --model` "
                    "writes all three)")
    elif report.models:
        _print_models(report.models, online=False)
        todo += [f"{problem} ([models] in {CONFIG_NAME})"
                 for m in report.models for problem in m.problems]
    if command is None:
        out.print(Text("test command: none found; looked for " +
                       "; ".join(detection.looked_for) + "".join(
                           f" ({note})" for note in detection.notes), style="yellow"))
        todo.append(f"set [repo] test_command in {CONFIG_NAME}: until then it runs a "
                    "placeholder that fails, saying so (or start again with `factory init "
                    "--test-command CMD`)")
    elif report.tests is None:
        out.print(Text(f"test command {command}: not run ({report.not_run})", style="yellow"))
    else:
        out.print(Text(f"test command found: {because}", style="dim"))
        _print_tests(report.tests)
        hint = init.missing_module(report.tests)
        if hint is not None:
            todo.append(hint)
        if not report.tests.passed:
            todo.append(f"make [repo] test_command in {CONFIG_NAME} pass on "
                        f"{config.repo.main_branch} in the sandbox (`factory doctor` runs it "
                        "again)")
    sample = init.SAMPLE.as_posix()
    if todo:
        out.print(Text("before `factory run`:", style="bold yellow"))
        for item in todo:
            out.print(Text(f"  - {clean_line(item)}"))
    out.print(Text("next:", style="bold"))
    for step in (f"cp {sample} specs/NAME.md, then make it your spec (`factory run` and "
                 f"`factory spec lint` read specs/*.md; the sample is never run)",
                 "factory spec lint", "factory doctor (checks the models and the test "
                 "command again), then factory run"):
        out.print(Text(f"  {step}"))
    return 0


def _ask_model() -> str:
    """On a terminal, the model for all three roles; elsewhere (scripts, CI) nothing is
    asked: the configuration says a model is missing, and so does `factory run`."""
    if not sys.stdin.isatty():
        return ""
    try:
        return input("model for the planner, implementer and reviewer (a litellm name, e.g. "
                     "openai/gpt-4o-mini; empty: set it later): ")
    except EOFError:
        return ""


def _init_key_env(name: str | None) -> str:
    """A variable's name, never a key: the configuration is read by every agent's tools."""
    if not name:
        return ""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise FactoryError(f"--key-env {name[:4]}...: expected the NAME of the environment "
                           "variable holding the key (e.g. OPENAI_API_KEY), never the key")
    return name


def _init_api_base(url: str | None) -> str:
    if not url:
        return ""
    if not url.startswith(("http://", "https://")):
        raise FactoryError(f"--api-base {url!r}: expected an http:// or https:// address of "
                           "an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1)")
    return url


def _spec_files(args: argparse.Namespace) -> list[tuple[Path, Path | None]]:
    """The files `factory spec lint` reads, each with the folder it was found in (None for a
    file named itself): each PATH, or each spec in a PATH that is a folder (its *.md but
    README.md, as a run reads a specs folder); with no PATH, the configured specs folder's."""
    names = [Path(name) for name in args.paths]
    if not names:
        from agents.config import load_config

        config = load_config(_root(args.root) / CONFIG_NAME)
        folder = config.specs_path
        if not folder.is_dir():
            raise FactoryError(f"{folder}: no specs folder ([repo] specs_dir = "
                               f"{config.repo.specs_dir!r}); `factory init` writes one")
        names = [folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd())
                 else folder]
    files: list[tuple[Path, Path | None]] = []
    for path in names:
        if not path.is_dir():
            files.append((path, None))
            continue
        found = sorted(p for p in path.glob("*.md") if p.name != "README.md")
        if not found:
            raise FactoryError(f"{path}: no spec files (*.md) in this folder")
        files.extend((p, path) for p in found)
    return files


def cmd_spec_lint(args: argparse.Namespace) -> int:
    from agents.specs import PARSE, lint_folder, lint_score, lint_spec

    texts: list[tuple[Path, Path | None, str]] = []
    for path, folder in _spec_files(args):
        try:
            texts.append((path, folder, path.read_text()))
        except OSError as exc:
            raise FactoryError(f"{path}: cannot read: {exc.strerror}") from None
    # A folder is what a run loads: what it would refuse across its specs (duplicate ids,
    # unknown dependencies, cycles) is reported on the files concerned, every one of them.
    across: dict[str, list[Any]] = {}
    for folder in dict.fromkeys(f for _, f, _ in texts if f is not None):
        for finding in lint_folder([(p, t) for p, f, t in texts if f == folder]):
            across.setdefault(str(finding.path), []).append(finding)
    worst = 0
    linted = []
    for path, _, text in texts:
        findings = sorted(lint_spec(text, path) + across.get(str(path), []),
                          key=lambda f: f.line)
        parsed = not any(f.code == PARSE for f in findings)
        score = lint_score(findings)  # 0 for a spec that does not parse
        worst = max(worst, int(any(f.severity == "error" for f in findings)))
        linted.append({"path": str(path), "score": score, "parses": parsed,
                       "findings": [f.model_dump(exclude={"path"}) for f in findings]})
        if args.json:
            continue
        name = clean_line(str(path))  # a spec a branch landed may be named by an agent
        out.print(Text.assemble((name, "bold"), f": precision {score}/100"))
        for f in findings:
            style = {"error": "red", "warning": "yellow"}.get(f.severity, "dim")
            out.print(Text.assemble(f"  {name}:{f.line}: ", (f.severity, style),
                                    f" {f.code}: {clean_line(f.message)}"))
    if args.json:
        print(json.dumps({"specs": linted, "ok": worst == 0}))
    return worst


async def _run(root: Path, specs: list[str] | None, headless: bool,
               as_json: bool = False, watch: bool = False) -> int:
    from agents.daemon import Daemon
    from agents.engine import Factory
    from console.progress import Progress

    path = socket_path(root)
    if served(root):
        raise FactoryError(f"this factory is open in another process (a daemon or a "
                           f"console; {path} answers): start the run from a console "
                           "attached to it (`factory console`, then ctrl+r), or stop it "
                           "and use `factory daemon --run` or `factory run`")
    factory = await Factory.open(root)
    # Consoles can look in on the run (`factory console` attaches); questions wait for a
    # person only while one is attached.
    daemon: Daemon | None = None
    try:
        serving = Daemon(factory, path, always_supervised=False)
        await serving.start()
        daemon = serving
    except (FactoryError, OSError) as exc:
        err.print(Text(f"consoles cannot attach to this run: {clean_line(str(exc))}",
                       style="yellow"))
    try:
        if factory.backend.name == "none":
            err.print("[bold red]WARNING: sandbox backend is 'none': agents run commands "
                      "UNSANDBOXED on this machine[/]")
        budget = factory.config.budgets.run
        # With --json, stdout holds the summary alone: progress lines go to stderr.
        console = out if not headless else Console(highlight=False, force_terminal=False,
                                                   soft_wrap=True, stderr=as_json)
        with Progress(factory.store, console, budget.usd, budget.tokens) as progress:
            summary = await factory.run(specs or None, watch=watch)
        if as_json:
            print(json.dumps({**dataclasses.asdict(summary), "complete": summary.complete,
                              "peak_agents": progress.peak_active}, default=str))
            return 0 if summary.complete else 1
        out.print()
        out.print(Text.assemble((f"Run {clean_line(summary.run_id)}", "bold"),
                                f": {clean_line(summary.status)}; peak "
                                f"{progress.peak_active} agents at once"))
        # Reasons quote gates' output: what the agents' code printed.
        for key in summary.landed:
            out.print(Text.assemble("  ", ("landed", "green"), f"   {clean_line(key)}"))
        for key, reason in summary.rejected:
            out.print(Text.assemble("  ", ("rejected", "red"),
                                    f" {clean_line(key)}: {clean_line(reason)}"))
        for key, reason in summary.failed:
            out.print(Text.assemble("  ", ("failed", "yellow"),
                                    f"   {clean_line(key)}: {clean_line(reason)}"))
        for key, reason in summary.waiting:
            out.print(Text.assemble("  ", ("waiting", "yellow"),
                                    f"  {clean_line(key)}: {clean_line(reason)}"))
        for spec_id, status, detail in summary.specs:
            out.print(Text.assemble("  ", (f"spec {status}", "yellow"),
                                    f" {clean_line(spec_id)}: {clean_line(detail)}"))
        # 0: everything planned landed; 1: something was rejected, failed or blocked (the
        # lines above say what and why); 2 (main): the run could not start.
        return 0 if summary.complete else 1
    finally:
        if daemon is not None:
            await daemon.close()
        await factory.close()


def cmd_run(args: argparse.Namespace) -> int:
    return _stoppable(_run(_root(args.root), args.specs, _headless(args) or args.json,
                           args.json))


def cmd_watch(args: argparse.Namespace) -> int:
    """`factory run` that does not end: every spec saved in the specs folder is planned
    again and every saved `.factory.toml` applied, until ctrl+c."""
    return _stoppable(_run(_root(args.root), args.specs, True, False, watch=True))


def _stoppable(work: Coroutine[Any, Any, int]) -> int:
    """Run work; SIGTERM stops it the way ctrl+c does (the run is cancelled, what it
    committed is kept, `factory run` resumes): exit 143 for SIGTERM, 130 for ctrl+c."""
    stopped: list[int] = []

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: (stopped.append(s), task.cancel()))
        return await work

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if not stopped:
            raise
        err.print("stopped: the store keeps every committed step; `factory run` resumes")
        return 128 + stopped[0]


def cmd_demo(args: argparse.Namespace) -> int:
    from agents import demo

    backend = args.sandbox or _demo_backend()
    path = demo.build(_place(args, "factory-demo"), backend, fresh=args.fresh)
    out.print(Text(f"demo project at {clean_line(str(path))} (sandbox: {backend})"))
    if _headless(args):
        # The demo rejects three branches by design: a run that went to its end is a 0.
        code = _stoppable(_run(path, None, True))
        return 0 if code == 1 else code
    # On screen, every branch waits for a person in the inbox: the demo is of supervising.
    return asyncio.run(_console(path, args.theme, start_run=True, approval="always"))


async def _console(root: Path | None, theme: str | None, *, start_run: bool = False,
                   approval: str | None = None, attach: Path | None = None,
                   observe: bool = False) -> int:
    from console.app import FactoryApp

    def connect() -> Any:
        if attach is not None:  # a console: it finds its daemon again if that restarts
            return connect_attached(attach, observe=observe, reconnect=True)
        assert root is not None
        return connect_own_engine(root, approval)

    app = FactoryApp(connect=connect, theme=theme, start_run=start_run)
    await app.run_async()
    if app.connect_error is not None:
        raise app.connect_error
    run_error = getattr(app.client, "run_error", None)
    if run_error is not None:
        raise run_error
    return 0


def _config(root: Path, approval: str | None) -> Any:
    """The repository's configuration, with `approval` in place of [queue] approval if
    given (`factory demo`, `factory daemon --approval`)."""
    from agents.config import load_config

    config = load_config(root / CONFIG_NAME)
    if approval is not None:
        config.queue.approval = approval  # type: ignore[assignment]
    return config


async def connect_in_process(root: Path, approval: str | None = None) -> Any:
    """Open the factory of `root` on the console's loop (the engine's modules load here, after
    the console's first frame; in a thread, so that the console keeps answering keys)."""
    await asyncio.to_thread(importlib.import_module, "agents.engine")
    from agents.engine import Factory
    from console.client import InProcessClient

    client = InProcessClient(await Factory.open(root, _config(root, approval)))
    await client.serve(socket_path(root))  # other consoles attach to this engine
    return client


async def connect_own_engine(root: Path, approval: str | None = None) -> Any:
    """Start the engine of `root` in a child process and attach to it (console/spawn.py says
    why); it stops when the console does. Where the repository's path is too long for a
    unix socket, the engine opens in the console's process instead, as it did before there
    were engine processes (no other console can attach to it then)."""
    await asyncio.to_thread(importlib.import_module, "console.spawn")
    from agents.daemon import socket_fits
    from console.spawn import connect_spawned

    # A missing or broken .factory.toml is reported here, as it is by every command, before
    # a process is started or anything is written under .factory/.
    await asyncio.to_thread(_config, root, approval)
    path = socket_path(root)
    if not socket_fits(path):
        return await connect_in_process(root, approval)
    return await connect_spawned(root, path, approval)


async def connect_attached(path: Path, *, observe: bool = False,
                           reconnect: bool = False) -> Any:
    await asyncio.to_thread(importlib.import_module, "console.attached")
    from console.attached import AttachedClient

    return await AttachedClient.connect(path, observe=observe, reconnect=reconnect)


def cmd_console(args: argparse.Namespace) -> int:
    if not sys.stdout.isatty():
        raise FactoryError("the console needs a terminal; use `factory run --headless` or "
                           "`factory status` without one")
    if args.attach:  # a socket given, perhaps forwarded from another machine (ssh -L)
        path = Path(args.attach)
        return asyncio.run(_console(None, args.theme, attach=path, observe=args.observe))
    root = _root(args.root)
    # A daemon serving this repository is the store's one writer: attach to it.
    if served(root):
        return asyncio.run(_console(root, args.theme, attach=socket_path(root),
                                    observe=args.observe))
    if args.observe:  # its own engine would be one nobody could steer
        raise FactoryError(f"--observe looks in on a daemon, and none serves {root}: start "
                           "one with `factory up`")
    return asyncio.run(_console(root, args.theme))


def cmd_daemon(args: argparse.Namespace) -> int:
    root = _root(args.root)
    path = Path(args.socket) if args.socket else socket_path(root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)  # a line for every model call
    if args.nice:  # before the store's and the agents' threads and processes: they inherit it
        os.nice(args.nice)
    return asyncio.run(_daemon(root, path.absolute(), args.run, args.approval, args.watch))


async def _daemon(root: Path, path: Path, run: bool, approval: str | None = None,
                  watch: bool = False) -> int:
    from agents.daemon import serve
    from agents.engine import Factory

    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, main.cancel)
    factory = await Factory.open(root, _config(root, approval))
    if factory.backend.name == "none":
        err.print("[bold red]WARNING: sandbox backend is 'none': agents run commands "
                  "UNSANDBOXED on this machine[/]")

    def ready(daemon: Any) -> None:
        out.print(Text(f"serving {root} on {daemon.path} (pid {os.getpid()}); attach with "
                       "`factory console`" + (f" --attach {daemon.path}"
                                              if path != socket_path(root) else "")))

    try:
        from console.daemonctl import pid_path

        # On the repository's socket, `factory down` and `factory status` find it by its pid.
        await serve(factory, path, run=run, watch=watch, ready=ready,
                    pid_file=pid_path(root) if path == socket_path(root) else None)
    except asyncio.CancelledError:
        out.print("stopping: the store keeps every committed step")
    finally:
        await factory.close()
    return 0


def _demo_backend() -> str:
    """bwrap where it works; otherwise say loudly that the demo runs unsandboxed."""
    if shutil.which("bwrap"):
        try:
            from agents.sandbox.doctor import diagnose

            if any(s.name == "bwrap" and s.works for s in diagnose(only=["bwrap"])):
                return "bwrap"
        except ImportError:
            pass
    err.print("[yellow]bubblewrap is not available: the demo runs with sandbox 'none'[/]")
    return "none"


async def _status(root: Path, as_json: bool) -> int:
    from agents import leases
    from agents.config import load_config
    from agents.store import Store
    from console import daemonctl

    config = load_config(root / CONFIG_NAME)
    daemon = await asyncio.to_thread(daemonctl.state, root)
    if not as_json:  # said even where there is no store yet
        out.print(Text(daemon.describe()))
    store = await Store.open(config.store_path, readonly=True)
    try:
        runs = sorted(store.rows("runs"), key=lambda r: r["started"] or 0)
        for run in runs:
            # Recorded as running, but no live process holds its lease: its process is gone.
            if run["status"] == "running" and not leases.alive(
                    (store.get("leases", f"run:{run['id']}") or {}).get("holder")):
                run["status"] = "interrupted"
        tasks = sorted(store.rows("tasks"), key=lambda r: r["key"])
        agents = store.rows("agents")
        if as_json:
            print(json.dumps({"runs": runs, "specs": store.rows("specs"), "tasks": tasks,
                              "agents": agents, "queue": queue_view(store),
                              "events": store.last_id, "daemon": daemon.as_json()},
                             default=str))
            return 0
        last = runs[-1] if runs else None
        if last:
            out.print(Text.assemble(
                (f"run {clean_line(last['id'])}", "bold"),
                clean_line(f": {last['status']} (specs {', '.join(last['specs'] or [])}); "
                           f"{store.last_id} events")))
        # Every cell a Text (a str cell is markup to rich), made inert: ids, keys and reasons
        # come from specs, planners and gates' output.
        cell = lambda value: Text(clean_line(str(value or "")))  # noqa: E731
        table = Table("spec", "status", "tasks", "landed", "rejected", "tokens", "USD")
        for s in sorted(store.rows("specs"), key=lambda r: r["id"]):
            table.add_row(cell(s["id"]), cell(s["status"]), str(s["tasks_total"] or 0),
                          str(s["tasks_landed"] or 0), str(s["tasks_rejected"] or 0),
                          f"{s['tokens'] or 0:,}", f"{s['cost'] or 0.0:.4f}")
        out.print(table)
        table = Table("task", "status", "agent", "tokens", "USD", "reason")
        table.columns[0].no_wrap = table.columns[2].no_wrap = True
        table.columns[5].overflow = "ellipsis"
        table.columns[5].no_wrap = True
        for t in tasks:
            table.add_row(cell(t["key"]), cell(t["status"]), cell(t["agent_id"]),
                          f"{t['tokens'] or 0:,}", f"{t['cost'] or 0.0:.4f}",
                          cell((t["reason"] or "")[:80]))
        out.print(table)
        return 0
    finally:
        await store.close()


# -- the queue, from anywhere ------------------------------------------------------------


def queue_view(store: Any) -> dict[str, Any]:
    """The queue as the store has it: open entries in order (with their chain link, latest
    test run and what the queue noted on them), the runs in flight, the queue's own state
    (main, batch size, paused and why), the tests seen to flake, and the approvals asked."""
    from agents.queue.merge_queue import latest_runs
    from agents.statuses import QUEUE_OPEN, Approval

    runs = sorted(store.rows("test_runs"), key=lambda r: r["started"] or 0)
    latest = latest_runs(runs)
    entries = []
    for row in sorted(store.rows("queue"), key=lambda r: r["position"] or 0):
        if row["status"] not in QUEUE_OPEN:
            continue
        link = store.get("links", row["key"]) or {}
        run = latest.get(row["key"]) or {}
        entries.append({**row, "linked": link.get("merge_commit") or None,
                        "link_ok": link.get("ok"), "last_run": run.get("id"),
                        "last_run_status": run.get("status"),
                        "last_run_size": run.get("size")})
    return {
        "entries": entries,
        "running": [r for r in runs if r["status"] == "running"],
        "state": store.get("queue_state", "queue") or {},
        "flaky_tests": sorted(store.rows("flaky_tests"), key=lambda r: -(r["flakes"] or 0)),
        "approvals": [e["key"] for e in entries if e["approval"] == Approval.PENDING],
        "runs": len(runs),
    }


async def _queue_show(root: Path, as_json: bool) -> int:
    from agents.config import load_config
    from agents.store import Store

    config = load_config(root / CONFIG_NAME)
    store = await Store.open(config.store_path, readonly=True)
    try:
        view = queue_view(store)
    finally:
        await store.close()
    if as_json:
        print(json.dumps(view, default=str))
        return 0
    state = view["state"]
    head = f"queue: {len(view['entries'])} open, {len(view['running'])} test runs now, " \
        f"{view['runs']} in all, batch size {state.get('batch') or '-'}"
    out.print(Text(clean_line(head), style="bold"))
    if state.get("paused"):
        out.print(Text.assemble(("paused", "bold red"),
                                f": {clean_line(state.get('pause_reason') or '')}"))
    cell = lambda value: Text(clean_line(str(value if value is not None else "")))  # noqa: E731
    table = Table("#", "entry", "status", "approval", "risk", "chain", "last test", "noted")
    for i, e in enumerate(view["entries"], 1):
        noted = []
        if e.get("suspect"):
            noted.append("suspect: tested alone")
        if e.get("cap"):
            noted.append(f"back from a failed batch (parts of {e['cap']})")
        last = f"{e['last_run_status']} (batch of {e['last_run_size']})" \
            if e.get("last_run_status") else ""
        chain = "linked" if e.get("linked") else ("refused" if e.get("link_ok") == 0 else "")
        table.add_row(str(i), cell(e["key"]), cell(e["status"]), cell(e["approval"]),
                      cell(e["risk"]), chain, cell(last), cell("; ".join(noted)))
    out.print(table)
    if view["flaky_tests"]:
        flaky = Table("flaky test", "flakes")
        for t in view["flaky_tests"][:10]:
            flaky.add_row(cell(t["name"]), str(t["flakes"] or 0))
        out.print(flaky)
    for key in view["approvals"]:
        out.print(Text.assemble(("waiting for a person: ", "yellow"), clean_line(key),
                                f" (factory approve {clean_line(key)}, or factory reject "
                                f"{clean_line(key)} --reason ...)"))
    return 0


async def _steer(root: Path, command: Any) -> int:
    """Give a command to the factory of `root`: to the process serving it (a daemon, a
    run, a console) when one does, else through the store, where the next run finds it."""
    if served(root):
        client = await connect_attached(socket_path(root))
        try:
            await client.command(command)
        finally:
            await client.close()
    else:
        from agents.engine import Factory

        factory = await Factory.open(root)
        try:
            await factory.execute(command, by="cli")
        finally:
            await factory.close()
    out.print(Text(clean_line(f"{command.op}: done"), style="green"))
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    root = _root(args.root)
    if args.queue_command == "move":
        from agents import commands

        delta = -1 if args.direction == "up" else 1
        return asyncio.run(_steer(root, commands.Move(key=args.key, delta=delta)))
    return asyncio.run(_queue_show(root, args.json))


def cmd_approve(args: argparse.Namespace) -> int:
    from agents import commands

    return asyncio.run(_steer(_root(args.root), commands.Approve(key=args.key)))


def cmd_reject(args: argparse.Namespace) -> int:
    from agents import commands

    return asyncio.run(_steer(_root(args.root),
                              commands.Reject(key=args.key, reason=args.reason)))


def cmd_retry(args: argparse.Namespace) -> int:
    from agents import commands

    return asyncio.run(_steer(_root(args.root), commands.Retry(key=args.key)))


def cmd_status(args: argparse.Namespace) -> int:
    return asyncio.run(_status(_root(args.root), args.json))


def cmd_up(args: argparse.Namespace) -> int:
    """Start this repository's daemon in the background, once (console/daemonctl.py)."""
    from agents.config import load_config
    from agents.daemon import MAX_SOCKET_PATH, socket_fits
    from console import daemonctl

    root = _root(args.root)
    load_config(root / CONFIG_NAME)  # a broken configuration is said here, nothing started
    if not socket_fits(socket_path(root)):
        raise FactoryError(f"{socket_path(root)}: longer than a unix socket may be "
                           f"({MAX_SOCKET_PATH} bytes): no daemon can serve this repository")
    options = ["--run"] if args.run else []
    if args.approval:
        options += ["--approval", args.approval]
    if args.watch:
        if "--watch" not in daemonctl.daemon_options():
            raise FactoryError("watch mode is not available yet: `factory daemon` has no "
                               "--watch in this version (`factory up` without --watch "
                               "starts the daemon)")
        options.append("--watch")
    started = daemonctl.up(root, options, args.wait)
    if args.json:
        print(json.dumps({"pid": started.pid, "started": not started.already,
                          "stale_removed": started.removed_stale,
                          **{k: str(v) for k, v in (("socket", socket_path(root)),
                                                     ("log", daemonctl.log_path(root)))}}))
        return 0
    if started.removed_stale:
        err.print(Text(f"removed a stale pid file: {clean_line(started.removed_stale)}",
                       style="yellow"))
    if started.already:
        ignored = " (its options stay as they were: `factory down` first to change them)" \
            if options else ""
        out.print(Text(f"a daemon already runs for {root}: pid {started.pid}, on "
                       f"{socket_path(root)}{ignored}"))
        return 0
    out.print(Text(f"daemon started: pid {started.pid}, serving {root} on "
                   f"{socket_path(root)}; log {daemonctl.log_path(root)}"))
    out.print("`factory console` attaches to it; `factory down` stops it")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop this repository's daemon cleanly, or clear what a dead one left."""
    from console import daemonctl

    root = _root(args.root)
    stopped = daemonctl.down(root, args.wait)
    if args.json:
        print(json.dumps({"stopped": stopped.pid, "stale_removed": stopped.stale}))
    elif stopped.stale is not None:
        out.print(Text(f"no daemon runs for {root}; removed a stale pid file: "
                       f"{clean_line(stopped.stale)}"))
    elif stopped.pid is None:
        out.print(Text(f"no daemon runs for {root}"))
    else:
        out.print(Text(f"daemon stopped (pid {stopped.pid}): the store keeps every committed "
                       "step; `factory up` resumes"))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.store.audit import verify

    root = _root(args.root)
    config = load_config(root / CONFIG_NAME)
    report = verify(config.store_path)
    if args.json:
        print(json.dumps({"ok": report.ok, "events": report.events,
                          "problems": report.problems,
                          "drift": [dataclasses.asdict(d) for d in report.drift or []],
                          "store": str(config.store_path)}, default=str))
        return 0 if report.ok else 1
    if report.ok:
        out.print(Text.assemble(("ok", "green"), f": {report.events} events, hash chain intact, "
                                "projections match a replay of the log "
                                f"({clean_line(str(config.store_path))})"))
        return 0
    for problem in report.problems:
        out.print(Text(clean_line(problem), style="red"))
    if report.problems:
        out.print(f"[red]TAMPERED[/]: {len(report.problems)} problem(s) in {report.events} "
                  "events")
    # Keys and values come from specs, agents and gates' output: printed inert.
    for drift in report.drift or []:
        out.print(Text(clean_line(f"drift: {drift}"), style="red"))
    if report.drift:
        rows = len({(d.table, d.key) for d in report.drift})
        out.print(f"[red]DRIFT[/]: {len(report.drift)} projection value(s) in {rows} row(s) "
                  "differ from a replay of the log (`factory store rebuild` writes the "
                  "replay's)")
    return 1


def cmd_store_rebuild(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.engine import RunLock
    from agents.store.audit import rebuild

    root = _root(args.root)
    config = load_config(root / CONFIG_NAME)
    # A run, a daemon or a console's engine keeps the projections in memory and writes its
    # rows back with every batch: it would undo the rebuild, so none may hold the store.
    if served(root):
        raise FactoryError(f"this factory is open in another process (a daemon, a run or a "
                           f"console; {socket_path(root)} answers): stop it before "
                           "`factory store rebuild`")
    lock = RunLock(root / ".factory" / "run.lock")
    try:
        lock.acquire()  # and no run starts until the rebuild is written
    except FactoryError as exc:
        raise FactoryError(f"{exc}: stop it before `factory store rebuild`") from None
    try:
        report = rebuild(config.store_path)
    finally:
        lock.release()
    if args.json:
        print(json.dumps({"events": report.events, "store": str(config.store_path),
                          "counts": {table: dict(zip(("added", "changed", "removed"), n,
                                                     strict=True))
                                     for table, n in report.counts.items()},
                          "drift": [dataclasses.asdict(d) for d in report.drift]},
                         default=str))
        return 0
    where = clean_line(str(config.store_path))
    if not report.drift:
        out.print(Text.assemble(("ok", "green"), f": {report.events} events replayed; every "
                                f"projection already matched the log ({where})"))
        return 0
    out.print(Text(f"rebuilt the projections from {report.events} events ({where}):"))
    for table, (added, changed, removed) in report.counts.items():
        out.print(Text(f"  {table}: {added} added, {changed} changed, {removed} removed"))
    shown = 50
    for drift in report.drift[:shown]:
        out.print(Text(clean_line(f"  {drift}"), style="dim"))
    if len(report.drift) > shown:
        out.print(Text(f"  ... and {len(report.drift) - shown} more", style="dim"))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.gc import collect, human_bytes

    root = _root(args.root)
    config = load_config(root / CONFIG_NAME)
    report = asyncio.run(collect(root, config, dry_run=args.dry_run))
    failed = any(i.error for i in report.items)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 1 if failed else 0
    verb = "would remove" if args.dry_run else "removed"
    for item in report.items:
        # Branch names and folders come from specs and agents: made inert.
        target = clean_line(item.target)
        if item.error:
            out.print(Text.assemble(("failed", "red"), f"  {item.kind} {target}: ",
                                    clean_line(item.error)))
        elif not item.remove:
            out.print(Text.assemble(("kept", "dim"), f"  {item.kind} {target}: ",
                                    clean_line(item.why)))
        else:
            out.print(Text.assemble((verb, "yellow" if args.dry_run else "green"),
                                    f"  {item.kind} {target} ({human_bytes(item.bytes)}): ",
                                    clean_line(item.why)))
    freed = sum(i.bytes for i in report.items if i.remove and not i.error
                and i.kind != "branch") if args.dry_run else report.freed
    objects = sum(i.bytes for i in report.items if i.remove and not i.error
                  and i.kind == "branch") if args.dry_run else report.unreferenced
    if not any(i.remove for i in report.items):
        out.print(Text(f"nothing to remove; .factory/ holds "
                       f"{human_bytes(report.factory_bytes_before)}"))
        return 0
    summary = f"{'would free' if args.dry_run else 'freed'} {human_bytes(freed)}"
    if objects:
        summary += (f"; {human_bytes(objects)} of objects only the deleted branches held "
                    "(git's own `git gc` frees them)")
    summary += (f"; .factory/ holds {human_bytes(report.factory_bytes_before)}" if args.dry_run
                else f"; .factory/ now holds {human_bytes(report.factory_bytes_after)}")
    out.print(Text(summary))
    return 1 if failed else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agents.config import find_config, load_config

    found = (Path(args.root).resolve() / CONFIG_NAME) if args.root else find_config(Path.cwd())
    config = load_config(found) if found is not None else None
    return asyncio.run(_doctor(config, args.online, args.json))


async def _doctor(config: Any, online: bool, as_json: bool) -> int:
    """Backends and the trust boundary always; with a configuration, its models (offline,
    then called when `online`) and its test command on main, in its sandbox. 0 when a
    confining backend works and, configured, every model and the tests pass."""
    from agents.models import check_each_model
    from agents.sandbox.doctor import backends, check_tests, trust

    statuses = await backends(config)
    boundary = trust(config)
    models, tests = [], None
    if config is not None:
        from agents.engine import make_router

        models = await check_each_model(config, make_router(config) if online else None)
        tests = await check_tests(config)
    ok = any(s.works and s.name != "none" for s in statuses) and \
        all(m.ok for m in models) and (tests is None or tests.passed)
    if as_json:
        print(json.dumps({
            "ok": ok, "config": str(config.root / CONFIG_NAME) if config else None,
            "backends": [dataclasses.asdict(s) for s in statuses],
            "trust": [{"what": what, "how": how} for what, how in boundary],
            "models": [{**dataclasses.asdict(m), "ok": m.ok} for m in models],
            "tests": dataclasses.asdict(tests) if tests is not None else None}))
        return 0 if ok else 1
    table = Table("backend", "works", "why")
    for status in statuses:
        table.add_row(status.name, "[green]yes[/]" if status.works else "[red]no[/]",
                      Text(clean(status.reason)))  # quotes what a backend printed
    out.print(table)
    table = Table("trust boundary", "")
    for what, how in boundary:
        table.add_row(what, Text(clean(how)))
    out.print(table)
    if config is None:
        out.print(Text(f"no {CONFIG_NAME} here or above: models and the test command were "
                       "not checked (run `factory doctor` in a repository, or give --root)",
                       style="yellow"))
        return 0 if ok else 1
    _print_models(models, online)
    _print_tests(tests)
    return 0 if ok else 1


def _print_models(models: list[Any], online: bool) -> None:
    headers = ["model", "named by", "offline"] + (["online"] if online else [])
    table = Table(*headers)
    for m in models:
        offline = Text("; ".join(m.problems), style="red") if m.problems \
            else Text("ok", style="green")
        row = [Text(clean_line(m.model)), Text(", ".join(m.keys)), offline]
        if online:
            style = {True: "green", False: "red"}.get(m.answered, "dim")
            row.append(Text(clean_line(m.said), style=style))  # quotes the provider
        table.add_row(*row)
    out.print(table)


def _print_tests(tests: Any) -> None:
    where = f" on main ({tests.commit[:12]})" if tests.commit else ""
    head = Text.assemble("test command ", (clean_line(tests.command), "bold"), where,
                         f" in the {tests.backend} sandbox: ")
    if tests.passed:
        out.print(Text.assemble(head, ("passes", "green")))
        return
    # The reason and the output are what the repository's own tests printed.
    out.print(Text.assemble(head, (clean_line(tests.reason), "red")))
    tail = [line for line in tests.output.splitlines() if line.strip()][-15:]
    for line in tail:
        out.print(Text(f"  {clean_line(line)}", style="dim"))


# -- parser ----------------------------------------------------------------------------------


ROOT_HELP = "repository root (default: the folder holding .factory.toml, here or above)"
JSON_HELP = "print the result as one JSON document (for scripts)"


def _root_option(p: argparse.ArgumentParser, help: str = ROOT_HELP) -> None:
    p.add_argument("--root", metavar="DIR", help=help)


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help=JSON_HELP)


def _group(sub: Any, name: str, help: str) -> Any:
    """A command of commands (`factory spec`, ...): alone, it prints its own help."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(fn=lambda args: _print_help(p))
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def version() -> str:
    """The installed package's version; from pyproject.toml when run from a checkout that
    was never installed (`python -m console.cli`)."""
    from importlib import metadata

    try:
        return metadata.version("factory-console")
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
            return str(tomllib.loads(text)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Every command takes --root, every argument has a help string, and what a script
    would read takes --json (tests/test_cli_conventions.py holds all three)."""
    parser = argparse.ArgumentParser(prog="factory", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"factory {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="write a .factory.toml for this repository (its test "
                       "command found and run in the sandbox) and an example spec")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="the repository to set up (default: here)")
    _root_option(p, "the repository to set up, as PATH (give one of them)")
    p.add_argument("--model", help="litellm model for the planner, implementer and reviewer, "
                   "e.g. openai/gpt-4o-mini (asked on a terminal when not given)")
    p.add_argument("--key-env", metavar="NAME", help="the environment variable holding the "
                   "model's API key (its name, never the key)")
    p.add_argument("--api-base", metavar="URL", help="an OpenAI-compatible server to send "
                   "model calls to (a local one: give --model as openai/NAME)")
    p.add_argument("--test-command", metavar="CMD", help="the command that must pass before "
                   "a branch lands (default: found from the repository's files)")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("run", help="run specs: plan, work, test and land")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec ids (default: all)")
    _root_option(p)
    p.add_argument("--headless", action="store_true", help="never open a screen")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON "
                   "(progress goes to stderr; implies --headless)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("watch", help="run specs and keep running: a saved spec is planned "
                       "again, a saved .factory.toml applied (until ctrl+c)")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec ids (default: all)")
    _root_option(p)
    p.set_defaults(fn=cmd_watch)

    p = sub.add_parser("status", help="what the store says now (safe while a run goes on)")
    _root_option(p)
    _json_option(p)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("queue", help="the merge queue: entries, batches, test runs, flaky "
                       "tests (safe while a run goes on)")
    _root_option(p)
    _json_option(p)
    p.set_defaults(fn=cmd_queue, queue_command=None)
    queue = p.add_subparsers(dest="queue_command", metavar="move")
    q = queue.add_parser("move", help="move a waiting entry up or down the queue")
    q.add_argument("key", metavar="ID", help="the entry's task, as spec/task")
    q.add_argument("direction", choices=["up", "down"],
                   help="up: nearer the front (tested and landed sooner); down: further back")
    _root_option(q)

    p = sub.add_parser("approve", help="let a queue entry that waits for a person land")
    p.add_argument("key", metavar="ID", help="the entry's task, as spec/task")
    _root_option(p)
    p.set_defaults(fn=cmd_approve)

    p = sub.add_parser("reject", help="refuse a queue entry, with a reason its agent and "
                       "the log keep")
    p.add_argument("key", metavar="ID", help="the entry's task, as spec/task")
    p.add_argument("--reason", required=True, help="why (recorded, shown to the agent)")
    _root_option(p)
    p.set_defaults(fn=cmd_reject)

    p = sub.add_parser("retry", help="put a rejected branch back in the queue")
    p.add_argument("key", metavar="ID", help="the entry's task, as spec/task")
    _root_option(p)
    p.set_defaults(fn=cmd_retry)

    p = sub.add_parser("demo", help="build the demo project and run the factory on it")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="where to build the demo project (default: factory-demo)")
    _root_option(p, "where to build the demo project, as PATH (give one of them)")
    p.add_argument("--headless", action="store_true",
                   help="run it to the end without a screen (branches land unapproved)")
    p.add_argument("--sandbox", choices=["bwrap", "docker", "none"],
                   help="sandbox backend for the demo (default: bwrap if it works)")
    p.add_argument("--fresh", action="store_true",
                   help="recreate the demo folder even if it was changed since the demo "
                   "wrote it (what was changed there is deleted)")
    p.add_argument("--theme", help="console theme (see themes/)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("console", help="open the supervisory console over this repository")
    _root_option(p)
    p.add_argument("--theme", help="console theme (see themes/)")
    p.add_argument("--attach", metavar="SOCKET",
                   help="attach to the daemon listening on SOCKET (by default a console "
                   "attaches to this repository's daemon when one runs)")
    p.add_argument("--observe", action="store_true",
                   help="read-only: the daemon refuses every command from this console "
                   "(approve, reject, answer, move, retry, save, run)")
    p.set_defaults(fn=cmd_console)

    from console.daemonctl import DOWN_SECONDS, UP_SECONDS

    p = sub.add_parser("up", help="start this repository's daemon in the background "
                       "(log: .factory/daemon.log); nothing if one runs")
    _root_option(p)
    p.add_argument("--run", action="store_true", help="start a run of every spec at once")
    p.add_argument("--approval", choices=["never", "high", "medium", "always"],
                   help="which branches wait for a person's approval (default: [queue] "
                        "approval in .factory.toml)")
    p.add_argument("--watch", action="store_true",
                   help="run the daemon in watch mode: every spec run, a saved spec planned "
                   "again, a saved .factory.toml applied")
    p.add_argument("--wait", type=float, default=UP_SECONDS, metavar="SECONDS",
                   help=f"how long to wait for the daemon to answer (default: {UP_SECONDS:g})")
    _json_option(p)
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("down", help="stop this repository's daemon (as ctrl+c stops a run)")
    _root_option(p)
    p.add_argument("--wait", type=float, default=DOWN_SECONDS, metavar="SECONDS",
                   help=f"how long to wait for it to exit (default: {DOWN_SECONDS:g})")
    _json_option(p)
    p.set_defaults(fn=cmd_down)

    p = sub.add_parser("daemon", help="serve the factory to consoles that attach and detach")
    _root_option(p)
    p.add_argument("--socket", help="unix socket to listen on (default: .factory/daemon.sock)")
    p.add_argument("--run", action="store_true", help="start a run of every spec at once")
    p.add_argument("--watch", action="store_true", help="run every spec and keep running: a "
                   "saved spec is planned again, a saved .factory.toml applied (implies --run)")
    p.add_argument("--approval", choices=["never", "high", "medium", "always"],
                   help="which branches wait for a person's approval (default: [queue] "
                        "approval in .factory.toml)")
    p.add_argument("--nice", type=int, choices=range(20), metavar="N", default=0,
                   help="lower the engine's CPU priority by N, 0-19 (a console's own engine "
                        "uses 10: on a busy machine the console's screen comes first)")
    p.set_defaults(fn=cmd_daemon)

    spec = _group(sub, "spec", "spec tools")
    p = spec.add_parser("lint", help="report how precise specs are")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="spec files, or folders whose *.md specs are all linted (default: "
                   "the configured specs folder, [repo] specs_dir)")
    _root_option(p, "the repository whose specs folder is linted when no PATH is given "
                 "(default: found from here)")
    _json_option(p)
    p.set_defaults(fn=cmd_spec_lint)

    from console.policy_cmd import add_policy_commands

    add_policy_commands(sub, _group, _root_option, _json_option)

    audit = _group(sub, "audit", "audit the store")
    p = audit.add_parser("verify", help="check the event log's hash chain, and the "
                         "projections against a replay of the log")
    _root_option(p)
    _json_option(p)
    p.set_defaults(fn=cmd_audit_verify)

    store = _group(sub, "store", "maintain the store")
    p = store.add_parser("rebuild", help="recompute every projection from the event log "
                         "(refused while the factory runs)")
    _root_option(p)
    _json_option(p)
    p.set_defaults(fn=cmd_store_rebuild)

    p = sub.add_parser("gc", help="remove what crashed runs left in .factory/ and the "
                       "branches of rejected tasks older than [run] keep_rejected_hours "
                       "(refused while the factory runs)")
    _root_option(p)
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be removed and what it frees; remove nothing")
    _json_option(p)
    p.set_defaults(fn=cmd_gc)

    p = sub.add_parser("doctor", help="what works here: sandbox backends, the trust "
                       "boundary, each role's model, the test command on main")
    _root_option(p, "the repository to check (default: the one here or above; without "
                 "one, only the sandbox backends are checked)")
    p.add_argument("--online", action="store_true",
                   help="also call each model once, for one token (costs that token)")
    _json_option(p)
    p.set_defaults(fn=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:  # `factory` alone: what it can do
        return _print_help(parser)
    try:
        return int(args.fn(args) or 0)
    except FactoryError as exc:
        # Errors quote paths, keys and what the engine or a daemon said.
        err.print(Text.assemble(("error: ", "bold red"), clean(str(exc))), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted: the store keeps every committed step; `factory run` resumes")
        return 130


if __name__ == "__main__":
    sys.exit(main())
