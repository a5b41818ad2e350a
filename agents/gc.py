"""`factory gc`: take back the disk that crashes and old rejections leave behind.

A run already removes a task's worktree once its work is committed or has failed, and sweeps
what a crashed run left when the next run starts. What stays between runs is what a person
may still want — a rejected or cancelled task's branch, to read or to retry — and what no
run comes back to clean when none starts again. gc reclaims both, on a person's word:

- worktree folders under .factory/worktrees that no running task owns (a task that is
  recorded as running keeps its worktree: its next run resumes in it);
- everything in .factory/landing and .factory/views (scratch of the queue and the planner);
- git's records of worktrees whose folder under .factory/ is gone (`git worktree prune`,
  limited to the engine's own worktrees: a person's worktree on a drive that is not mounted
  now is no business of ours);
- the `factory/<spec>/<task>` branches of rejected, cancelled and failed tasks once they are
  older than `[run] keep_rejected_hours`.

Nothing else is touched: not main, not a person's branches, not a landed task's branch (its
history is main's now, and the branch is what a person finds it by), nothing outside
.factory/ but those branches. gc refuses while a run, a daemon or a console's engine holds
the store, because what it would call an orphan may be a worktree being made.

Each item says the bytes it frees, measured: blocks on disk for folders (each file once, links
not followed); for a branch, the objects only it holds (`git rev-list --disk-usage`). Those
objects become unreachable when the branch goes, and git's own garbage collection frees them
(`git gc`); gc does not prune the object store itself, since that would also prune what a
person left unreachable on purpose (a dropped stash they might still recover).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agents.errors import FactoryError
from agents.serving import served
from agents.statuses import BranchStatus, TaskStatus

if TYPE_CHECKING:  # the console measures disk use with this module: keep its import light
    from agents.config import FactoryConfig

Kind = Literal["worktree", "scratch", "record", "branch"]

# Tasks whose branch nothing will land: kept for inspection, then deleted.
_ENDED = {TaskStatus.REJECTED, TaskStatus.CANCELLED, TaskStatus.FAILED}
BRANCH_PREFIX = "factory/"


@dataclass
class Item:
    kind: Kind
    target: str  # a path relative to the repository, or a branch name
    bytes: int
    why: str
    remove: bool = True  # False: kept, and `why` says until when
    removed: bool = False
    error: str | None = None


@dataclass
class Report:
    dry_run: bool
    items: list[Item] = field(default_factory=list)
    factory_bytes_before: int = 0
    factory_bytes_after: int = 0

    @property
    def freed(self) -> int:
        """Bytes taken back from the file system now (folders and records)."""
        return sum(i.bytes for i in self.items if i.removed and i.kind != "branch")

    @property
    def unreferenced(self) -> int:
        """Bytes of objects only deleted branches held: git's own gc frees them."""
        return sum(i.bytes for i in self.items if i.removed and i.kind == "branch")

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "items": [asdict(i) for i in self.items],
                "factory_bytes_before": self.factory_bytes_before,
                "factory_bytes_after": self.factory_bytes_after, "freed": self.freed,
                "unreferenced": self.unreferenced,
                "errors": sum(1 for i in self.items if i.error)}


def human_bytes(n: int) -> str:
    """Bytes as a person reads them (1024-based, as `du -h`)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable: GiB ends the loop


def disk_bytes(path: Path) -> int:
    """What a file or folder takes on disk: allocated blocks, each inode once, links not
    followed (an agent's symlink to / must not make a worktree look like the whole disk).
    What cannot be read is not counted."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        top = path.lstat()
    except OSError:
        return 0
    seen.add((top.st_dev, top.st_ino))
    total += top.st_blocks * 512
    if not path.is_dir() or path.is_symlink():
        return total
    stack = [str(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=False)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _admin_dir(common: Path, folder: Path) -> Path | None:
    """git's record (.git/worktrees/NAME) of a worktree folder, if its pointer names one."""
    try:
        text = (folder / ".git").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir:"):
        return None
    admin = Path(text.split(":", 1)[1].strip())
    return admin if admin.resolve().is_relative_to(common / "worktrees") else None


def _folders(root: Path, common: Path, tasks: list[dict[str, Any]]) -> list[Item]:
    factory = root / ".factory"
    running = {Path(t["worktree"]).resolve() for t in tasks
               if t["status"] == TaskStatus.RUNNING and t["worktree"]}
    items: list[Item] = []
    worktrees = factory / "worktrees"
    if worktrees.is_dir():
        for path in sorted(worktrees.iterdir()):
            admin = _admin_dir(common, path)
            size = disk_bytes(path) + (disk_bytes(admin) if admin is not None else 0)
            if path.resolve() in running:
                items.append(Item("worktree", _rel(root, path), size, remove=False,
                                  why="a running task's worktree: its next run resumes in it"))
            else:
                items.append(Item("worktree", _rel(root, path), size,
                                  why="no running task owns it (left by a crash or by hand)"))
    for name, what in (("landing", "the merge queue's"), ("views", "the planner's")):
        folder = factory / name
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                admin = _admin_dir(common, path)
                size = disk_bytes(path) + (disk_bytes(admin) if admin is not None else 0)
                items.append(Item("scratch", _rel(root, path), size,
                                  why=f"{what} scratch, left by a run that ended"))
    return items


def _records(root: Path, common: Path) -> list[Item]:
    """git's records of the engine's worktrees whose folder is gone."""
    items: list[Item] = []
    records = common / "worktrees"
    factory = (root / ".factory").resolve()
    if not records.is_dir():
        return items
    for admin in sorted(records.iterdir()):
        try:
            pointer = Path((admin / "gitdir").read_text().strip())
        except (OSError, UnicodeDecodeError):
            continue  # git's own prune judges records it cannot read; we leave them
        folder = pointer.parent
        if not folder.resolve().is_relative_to(factory) or folder.exists():
            continue
        if (admin / "locked").exists():
            continue  # a person's lock: git's prune keeps it too
        items.append(Item("record", _rel(root, folder), disk_bytes(admin),
                          why=f"git's record of a removed worktree ({_rel(root, admin)})"))
    return items


def _branches(root: Path, tasks: dict[str, dict[str, Any]],
              branches: dict[str, dict[str, Any]], keep_hours: float,
              now: float) -> list[Item]:
    listed = _git(root, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH_PREFIX}")
    if listed.returncode != 0:
        raise FactoryError(f"git for-each-ref failed: {listed.stderr.strip()}")
    items: list[Item] = []
    keep = keep_hours * 3600
    for ref in listed.stdout.split():
        name = ref.removeprefix("refs/heads/")
        parts = name.split("/")
        task = tasks.get(f"{parts[1]}/{parts[2]}") if len(parts) == 3 else None
        row = branches.get(name)
        if task is None or task["status"] not in _ENDED or \
                (row is not None and row["status"] != BranchStatus.REJECTED):
            continue  # landed, still going, or not one the store knows: never ours to delete
        usage = _git(root, "rev-list", "--objects", "--disk-usage", ref, "--not",
                     f"--exclude={ref}", "--all")
        size = int(usage.stdout.strip() or 0) if usage.returncode == 0 else 0
        ended = max(task["updated"] or 0, (row or {}).get("updated") or 0)
        age = now - ended
        status = task["status"]
        if age < keep:
            items.append(Item("branch", name, size, remove=False,
                              why=f"{status} {_hours(age)} ago; kept for inspection for "
                              f"another {_hours(keep - age)} ([run] keep_rejected_hours = "
                              f"{keep_hours:g})"))
        else:
            items.append(Item("branch", name, size,
                              why=f"{status} {_hours(age)} ago, longer than [run] "
                              f"keep_rejected_hours = {keep_hours:g}"))
    return items


def _remove(root: Path, config: FactoryConfig, item: Item) -> None:
    from agents.workspace import Workspace

    if item.kind == "branch":
        done = _git(root, "branch", "-D", item.target)
        if done.returncode != 0:
            item.error = done.stderr.strip() or f"git branch -D exited {done.returncode}"
        else:
            item.removed = True
        return
    path = root / item.target
    if item.kind == "record":
        done = _git(root, "worktree", "remove", "--force", str(path))
        if done.returncode != 0:
            item.error = done.stderr.strip() or f"git worktree remove exited {done.returncode}"
        else:
            item.removed = True
        return
    ws = Workspace(root, root / ".factory" / "worktrees", config.repo.main_branch)
    try:
        ws.remove(path)
    except FactoryError as exc:
        item.error = str(exc)
        return
    finally:
        ws.close()
    if path.exists() or path.is_symlink():
        item.error = "still there after removal (something in it cannot be deleted)"
    else:
        item.removed = True


async def _rows(config: FactoryConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from agents.store import Store

    if not config.store_path.exists():
        return [], []
    store = await Store.open(config.store_path, readonly=True)
    try:
        return store.rows("tasks"), store.rows("branches")
    finally:
        await store.close()


async def _record(config: FactoryConfig, report: Report) -> None:
    """The log says what gc deleted: a branch the store still calls rejected is gone."""
    from agents import events as ev
    from agents.store import Store

    removed = [i for i in report.items if i.removed]
    if not removed or not config.store_path.exists():
        return
    names = ", ".join(i.target for i in removed[:20]) + \
        (f" and {len(removed) - 20} more" if len(removed) > 20 else "")
    store = await Store.open(config.store_path)
    try:
        await store.append(ev.Notice(level="info", message=(
            f"factory gc removed {len(removed)} item(s), {report.freed} bytes freed, "
            f"{report.unreferenced} bytes of objects left to git's gc: {names}")))
    finally:
        await store.close()


async def collect(root: Path, config: FactoryConfig, *, dry_run: bool = False,
                  now: float | None = None) -> Report:
    """What gc would remove and keep, and (unless `dry_run`) remove it. Refused, with a
    message saying what to stop, while anything holds the factory's store."""
    from agents.engine import RunLock

    root = root.resolve()
    if served(root):
        raise FactoryError(f"this factory is open in another process (a daemon, a run or a "
                           f"console; {root / '.factory' / 'daemon.sock'} answers): stop it "
                           "before `factory gc`")
    lock = RunLock(root / ".factory" / "run.lock")
    try:
        lock.acquire()  # and no run starts while gc decides what is an orphan
    except FactoryError as exc:
        raise FactoryError(f"{exc}: stop it before `factory gc`") from None
    try:
        common = _git(root, "rev-parse", "--path-format=absolute", "--git-common-dir")
        if common.returncode != 0:
            raise FactoryError(f"{root}: not a git repository")
        common_dir = Path(common.stdout.strip()).resolve()
        tasks, branches = await _rows(config)
        report = Report(dry_run=dry_run,
                        factory_bytes_before=await asyncio.to_thread(disk_bytes,
                                                                     root / ".factory"))

        def plan() -> list[Item]:
            return [*_folders(root, common_dir, tasks), *_records(root, common_dir),
                    *_branches(root, {t["key"]: t for t in tasks},
                               {b["name"]: b for b in branches},
                               config.run.keep_rejected_hours,
                               time.time() if now is None else now)]

        report.items = await asyncio.to_thread(plan)
        if not dry_run:
            for item in report.items:
                if item.remove:
                    await asyncio.to_thread(_remove, root, config, item)
            await _record(config, report)
        report.factory_bytes_after = await asyncio.to_thread(disk_bytes, root / ".factory")
        return report
    finally:
        lock.release()
