"""Watch mode: a saved spec is re-planned, a saved configuration applied, while the factory
runs.

The watcher only reports edits as events; what happens next is decide's, as for any other
change of state: a spec whose saved text differs from the text its plan was made from is
planned again (the planner is given the plan in force, so unchanged tasks keep their ids and
their work). An edit that does not parse is reported, file and line, and changes nothing: the
plan made from the last good save stays in force. A saved `.factory.toml` is validated; what
can change under a running engine (concurrency, retries, the queue's settings, the test
command) is applied at once, the rest is reported as needing a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchfiles import Change, awatch

from agents import events as ev
from agents.config import CONFIG_NAME, FactoryConfig, load_config
from agents.errors import FactoryError
from agents.specs import lint_score, lint_spec, parse_spec

if TYPE_CHECKING:
    from agents.orchestrator import Orchestrator

# Settings a running engine takes up at once (read where they are used); any other change
# needs a restart (models, sandboxes and the store are opened once).
LIVE = ("run.concurrency", "run.task_retries", "repo.test_command", "queue.")
# How long a burst of saves is let settle before it is acted on (an editor's save is often
# several writes and a rename).
SETTLE_MS = 50


class Watch:
    def __init__(self, orchestrator: Orchestrator, specs_dir: Path, root: Path) -> None:
        self.orchestrator = orchestrator
        self.specs_dir = specs_dir
        self.root = root

    async def run(self) -> None:
        """Both watches until cancelled (with the run)."""
        await asyncio.gather(self._specs(), self._config())

    async def _specs(self) -> None:
        async for changes in awatch(self.specs_dir, step=SETTLE_MS, debounce=400,
                                    watch_filter=_spec_file):
            for path in sorted({Path(p) for change, p in changes}):
                if path.exists():
                    await self.spec_edited(path)
                else:
                    await self.orchestrator.emit(ev.Notice(level="warning", message=(
                        f"{path.name} was deleted: the work planned from it goes on "
                        "(cancel its tasks from the console to stop it)")))

    async def _config(self) -> None:
        config = self.root / CONFIG_NAME
        async for changes in awatch(self.root, step=SETTLE_MS, debounce=400, recursive=False,
                                    watch_filter=lambda _, p: Path(p) == config):
            if any(change != Change.deleted for change, _ in changes):
                await self.config_edited(config)

    async def spec_edited(self, path: Path) -> None:
        o = self.orchestrator
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
            spec = parse_spec(text, path)
        except (OSError, UnicodeError, FactoryError) as exc:
            await o.emit(ev.Notice(level="error", message=(
                f"{exc}; the plan made from the last good save stays in force")))
            return
        from agents.orchestrator import spec_digest

        digest = spec_digest(text)
        shown = path.relative_to(self.root) if path.is_relative_to(self.root) else path
        known = o.store.get("specs", spec.id)
        if spec.id not in o._specs or known is None:
            o._specs[spec.id], o._texts[spec.id] = spec, text
            await o.emit(ev.SpecRegistered(spec_id=spec.id, title=spec.title, path=str(path),
                                           priority=spec.priority,
                                           depends_on=spec.depends_on, digest=digest))
        elif known["digest"] != digest:
            o._specs[spec.id], o._texts[spec.id] = spec, text
            await o.emit(ev.SpecSaved(spec_id=spec.id, path=str(shown), digest=digest,
                                      lint_score=lint_score(lint_spec(text, path))))
        o.wake()

    async def config_edited(self, path: Path) -> None:
        o = self.orchestrator
        try:
            new = await asyncio.to_thread(load_config, path)
        except FactoryError as exc:
            await o.emit(ev.Notice(level="error", message=(
                f"{exc}; the configuration in force stays")))
            return
        changed = _differences(_flat(o.config.model_dump()), _flat(new.model_dump()))
        if not changed:
            return
        live = [k for k in changed if k.startswith(LIVE)]
        later = [k for k in changed if not k.startswith(LIVE)]
        if live:
            o.config = _applied(o.config, new)
            o.queue.approval = o.config.queue.approval
            if hasattr(o.lander, "test_command"):
                o.lander.test_command = o.config.repo.test_command
            await o.emit(ev.Notice(level="info", message=(
                "configuration applied: " + ", ".join(live))))
        if later:
            await o.emit(ev.Notice(level="warning", message=(
                "configuration saved; these take effect after a restart (`factory down`/"
                "`up`, or a new run): " + ", ".join(later))))
        o.wake()


def _spec_file(change: Change, path: str) -> bool:
    p = Path(path)
    return p.suffix == ".md" and p.name != "README.md" and not p.name.startswith(".")


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _applied(old: FactoryConfig, new: FactoryConfig) -> FactoryConfig:
    """The configuration in force with the live settings of `new`."""
    run = old.run.model_copy(update={"concurrency": new.run.concurrency,
                                     "task_retries": new.run.task_retries})
    repo = old.repo.model_copy(update={"test_command": new.repo.test_command})
    merged = old.model_copy(update={"run": run, "repo": repo, "queue": new.queue})
    merged._root = old._root
    return merged

