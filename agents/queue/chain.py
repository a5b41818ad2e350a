"""What the merge queue does next, worked out from its state alone (no I/O, no clock).

The queue keeps one chain on top of main: the first cleared entry merged onto main, the next
merged onto that merge, and so on (its links). Testing the chain's i-th commit tests main
with the first i entries exactly as they would land, so:

- a batch is one test of a point further up the chain (every entry below it goes in with it);
- speculation is several points in flight at once, each on top of the ones below it;
- landing moves main to the highest point that passed: main only ever points to a commit
  whose very tree passed the tests, and the chain above it stays valid (it was built on it).

When a point fails, the entries of its batch leave the chain at once, and the entries behind
them are linked onto the highest pass instead (as Zuul re-bases onto the nearest item ahead
that did not fail), so one failure holds up nothing behind it:

- entries whose changed files the failing tests name (`tests/test_stats.py` names
  `textkit/stats.py`) are the likely culprits: each is tested alone on top of main, on the
  side, in a fresh sandbox; the rest of the batch keeps its place;
- with no such hint, the batch goes to the back of the queue in halves (bisection), each
  half tested there on its own, each on top of what lands before it;
- an entry is evicted only when a failure comes back: it fails alone on top of main, and
  either the same tests failed in the batch that sent it there or it failed alone before. A
  failure that does not come back is a flake and evicts nothing.

The batch size adapts as Zuul's window does: one more after a batch lands, half after a
batch fails without a hint. `plan` is called by `agents/decide.py` with the projections'
rows; the bench and the property tests call it with rows of the same shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

Row = Mapping[str, Any]
Mode = Literal["serial", "batch", "speculative", "speculative-batch"]
MODES: tuple[Mode, ...] = ("serial", "batch", "speculative", "speculative-batch")

# The batch size a queue starts with, and the largest it grows to.
START_WINDOW = 8
MAX_WINDOW = 16


@dataclass(frozen=True)
class QueueSettings:
    mode: Mode = "serial"
    runners: int = 1
    max_window: int = MAX_WINDOW
    preflight: bool = True

    @property
    def batches(self) -> bool:
        return self.mode in ("batch", "speculative-batch")

    @property
    def speculates(self) -> bool:
        return self.mode in ("speculative", "speculative-batch")


@dataclass(frozen=True)
class LinkEntry:
    """Merge the entry's commit onto `onto` (main, or the chain's commit below it)."""

    key: str
    commit: str
    onto: str
    position: int

    @property
    def work(self) -> str:
        return "queue:link"


@dataclass(frozen=True)
class TestPoint:
    """Run the test command on `commit`: the chain's commit at `position` (its `size`
    entries above the highest pass make it a batch), or main itself (position 0)."""

    commit: str
    position: int
    keys: tuple[str, ...]
    size: int
    attempt: int

    @property
    def work(self) -> str:
        return f"queue:test:{self.commit}:{self.attempt}"


@dataclass(frozen=True)
class TestAlone:
    """Merge a suspect entry onto main, on the side, and run the tests there: whether its
    batch's failure comes back with nothing else on top of a tree known to pass."""

    key: str
    commit: str
    onto: str
    attempt: int

    @property
    def work(self) -> str:
        return f"queue:alone:{self.key}:{self.attempt}"


@dataclass(frozen=True)
class LandChain:
    """Move main to the chain's commit `commit`: the entries below it land together."""

    commit: str
    main_before: str
    keys: tuple[str, ...]
    window: int

    @property
    def work(self) -> str:
        return "queue:land"


@dataclass(frozen=True)
class Evict:
    """The entry is rejected: its link failed a gate, or its failure came back."""

    key: str
    gate: str
    reason: str
    output: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class Suspect:
    """A batch failed and the failing tests name these entries: they leave the chain to be
    tested alone; the rest of the batch keeps its place."""

    keys: tuple[str, ...]
    run_ids: tuple[str, ...]  # the failed runs this settles
    failing: tuple[str, ...]
    single: bool = False  # the batch was this entry alone: a pass alone makes it a flake


@dataclass(frozen=True)
class Requeue:
    """A batch failed with no hint (or a suspect's side test passed): its entries go to the
    back of the queue, in parts of at most `cap` entries tested on their own."""

    keys: tuple[str, ...]
    cap: int
    run_ids: tuple[str, ...]  # the failed (or passed side) runs this settles
    failing: tuple[str, ...]
    window: int
    flaky: bool = False  # the failure did not come back on a tree holding the same change


@dataclass(frozen=True)
class FlakeSeen:
    """A failed run that another run of a tree holding the same changes proved wrong."""

    run_id: str
    failing: tuple[str, ...]


@dataclass(frozen=True)
class Pause:
    """Main itself fails its tests (twice): nothing is tested on top of it, and nobody's
    entry is blamed, until main changes or a person retries."""

    main: str
    reason: str
    run_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quarantine:
    """Main itself fails these tests (twice, by name): they are set aside, reported, and
    their failures count against nobody until a tree holding all of them passes; the queue
    goes on instead of pausing."""

    main: str
    tests: tuple[str, ...]
    reason: str
    run_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Release:
    """A tree the queue lands passed every test, the quarantined ones included: they count
    again."""

    tests: tuple[str, ...]
    run_id: str


QueueIntent = (LinkEntry | TestPoint | TestAlone | LandChain | Evict | Suspect | Requeue
               | FlakeSeen | Pause | Quarantine | Release)


@dataclass
class Point:
    """One commit of the chain and what its test runs said."""

    position: int
    key: str
    commit: str
    runs: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return any(r["status"] == "passed" for r in self.runs)

    @property
    def running(self) -> bool:
        return any(r["status"] == "running" for r in self.runs)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.runs if r["status"] == "failed"]

    @property
    def failed(self) -> bool:
        return bool(self.failures) and not self.passed and not self.running


def chain_of(main: str, entries: Sequence[Row], links: Mapping[str, Row]) \
        -> tuple[list[Point], Row | None]:
    """The chain as it stands on main: the linked prefix of the queue's order (suspects are
    tested on the side, not in it), and the first entry not linked onto it yet."""
    chain: list[Point] = []
    base = main
    for entry in entries:
        if entry.get("suspect"):
            continue
        link = links.get(entry["key"])
        if link is None or link["base"] != base or link["entry_commit"] != entry["commit_sha"]:
            return chain, entry
        chain.append(Point(len(chain) + 1, entry["key"], link["merge_commit"] or ""))
        if not link["ok"]:
            return chain, None  # a refused link ends the chain until it is dealt with
        base = link["merge_commit"]
    return chain, None


def plan(main: str, entries: Sequence[Row], links: Mapping[str, Row], runs: Iterable[Row],
         window: int, settings: QueueSettings, *, linking: bool = False,
         landing: bool = False, busy: int | None = None,
         flaky: frozenset[str] = frozenset(),
         quarantined: frozenset[str] = frozenset()) -> list[QueueIntent]:
    """The queue's next intents.

    `entries`: the cleared open entries in queue order (key, commit_sha, files, and what the
    queue noted on them: cap, suspect, failed_tests, failures); `links`: each entry's latest
    link (base, entry_commit, merge_commit, ok, gate, reason); `runs`: the test runs (id,
    commit, status, failing, reason, output, handled; `alone` names a suspect's side run);
    `window`: the batch size now; `linking`, `landing`: that work is under way already;
    `busy`: runners taken (by default, the runs still running); `flaky`: tests seen to
    flake before, whose failures are never evidence against an entry; `quarantined`: tests
    that fail on main itself, whose failures are not counted at all (a run failing only
    those passed)."""
    by_key = {e["key"]: e for e in entries}
    if quarantined:
        runs = [_without(r, quarantined) for r in runs]
        flaky = flaky | quarantined
    chain, unlinked = chain_of(main, entries, links)
    points: dict[str, Point] = {p.commit: p for p in chain}
    on_main = Point(0, "", main)
    alone: dict[str, list[Row]] = {}
    running = 0
    for run in runs:
        running += run["status"] == "running"
        if run.get("handled"):
            continue  # a failure already acted on
        if run.get("alone"):
            alone.setdefault(run["alone"], []).append(run)
            continue
        point = on_main if run["commit_sha"] == main else points.get(run["commit_sha"])
        if point is not None:
            point.runs.append(run)
    out: list[QueueIntent] = []
    free = max(0, settings.runners - (running if busy is None else busy))

    # Pre-flight: main itself must pass before anything is tested on top of it.
    if settings.preflight and not on_main.passed:
        if on_main.running or not free:
            return out
        if _reproduced(on_main.failures, flaky):
            run = on_main.failures[-1]
            ids = tuple(r["id"] for r in on_main.failures)
            named = _failing_alike(on_main.failures) - flaky
            if named and "could not run" not in (run.get("reason") or ""):
                return [Quarantine(main, tuple(sorted(named)), run.get("reason") or "", ids)]
            return [Pause(main, run.get("reason") or "the tests fail on main", ids)]
        return [TestPoint(main, 0, (), 0, len(on_main.failures) + 1)]

    # Suspects, tested alone on top of main, first: they are cheap and settle a failure.
    for key, entry in by_key.items():
        if not entry.get("suspect"):
            continue
        tried = alone.get(key, [])
        if any(r["status"] == "running" for r in tried):
            continue
        passed = [r for r in tried if r["status"] == "passed"]
        failed = [r for r in tried if r["status"] == "failed"]
        if passed:  # it does not fail alone: back in line, on its own (a flake if it failed
            # alone before: those tests are known to flake from now on)
            single = bool(entry.get("suspect_single"))
            out.append(Requeue((key,), 1, tuple(r["id"] for r in tried),
                               tuple(entry.get("failed_tests") or ()) if single else (),
                               window, flaky=single))
        elif failed and _came_back(failed, entry, flaky):
            out.append(_evict(key, failed[-1]))
        elif free:
            free -= 1
            out.append(TestAlone(key, entry["commit_sha"], main, len(failed) + 1))

    # A refused link: gates an entry fails on its own evict it wherever it is; a conflict
    # with entries ahead (not with main) waits until they have landed.
    if chain:
        last = links[chain[-1].key]
        if not last["ok"]:
            if last["gate"] != "conflicts" or last["base"] == main:
                out.append(Evict(chain[-1].key, last["gate"], last["reason"] or ""))
            chain = chain[:-1]

    highest_pass = max((p.position for p in chain if p.passed), default=0)
    # Failures below a pass did not come back on a tree holding the same changes (said
    # before main moves past them).
    out.extend(FlakeSeen(r["id"], tuple(r.get("failing") or ())) for p in chain[:highest_pass]
               for r in p.failures)
    if highest_pass and not landing:
        grown = min(settings.max_window, window + 1) if settings.batches else 1
        top = chain[highest_pass - 1]
        out.append(LandChain(top.commit, main, tuple(p.key for p in chain[:highest_pass]),
                             grown))
        clean = [r for r in top.runs if r["status"] == "passed" and not r.get("excused")]
        if quarantined and clean:
            out.append(Release(tuple(sorted(quarantined)), clean[-1]["id"]))

    above = chain[highest_pass:]
    for index, point in enumerate(above):
        if point.running:
            break  # a failure above a point still running waits for it
        if point.failed:
            batch = [by_key[p.key] for p in above[:index + 1]]
            failing = set(point.failures[-1].get("failing") or ())
            only_flaky = bool(failing) and failing <= flaky and len(point.failures) < 3
            if only_flaky or (len(point.failures) == 1 and len(batch) > 1
                              and not _hinted(batch, point)):
                if free:  # no hint: the same tree once more, in a fresh sandbox, first
                    out.append(TestPoint(point.commit, point.position,
                                         tuple(p.key for p in chain[:point.position]),
                                         len(batch), len(point.failures) + 1))
                return out
            out.extend(_failed_batch(batch, point.failures, window, flaky))
            return out

    size = max(1, min(window, settings.max_window)) if settings.batches else 1
    lanes = settings.runners if settings.speculates else 1
    tested = max((p.position for p in above if p.runs), default=highest_pass)
    in_flight = sum(1 for p in above if p.running)
    caps = [by_key[p.key].get("cap") for p in chain]
    wanted: list[int] = []
    # The next batches up the chain, one per free lane; a batch waits for its entries while
    # more are being linked, and goes short only when the queue holds no more.
    at = tested
    while free > len(wanted) and in_flight + len(wanted) < lanes:
        step = _batch_size(caps, at, size)
        if at + step > len(chain):
            if unlinked is not None or len(chain) <= at:
                break
            step = len(chain) - at
        at += step
        wanted.append(at)
    for position in wanted:
        point = chain[position - 1]
        out.append(TestPoint(point.commit, position, tuple(p.key for p in chain[:position]),
                             position - highest_pass, 1))

    # Link ahead far enough for what the free lanes could test next.
    depth = max(tested, *wanted, 0) + size * max(1, lanes - in_flight - len(wanted))
    if unlinked is not None and not linking and len(chain) < depth:
        out.append(LinkEntry(unlinked["key"], unlinked["commit_sha"],
                             chain[-1].commit if chain else main, len(chain) + 1))
    return out


def _failed_batch(batch: list[Row], failures: list[Row], window: int,
                  flaky: frozenset[str]) -> list[QueueIntent]:
    """What a failed batch (the entries above the highest pass, up to the failed point)
    does: hinted entries become suspects, else the batch goes back in halves."""
    run = failures[-1]
    ids = tuple(r["id"] for r in failures)
    failing = tuple(run.get("failing") or ())
    if len(batch) == 1:
        entry = batch[0]
        if _came_back([run], entry, flaky):
            return [_evict(entry["key"], run)]
        return [Suspect((entry["key"],), ids, failing, single=True)]
    hinted = [e["key"] for e in batch if named_by(failing, e.get("files") or ())]
    if hinted and len(hinted) < len(batch):
        return [Suspect(tuple(hinted), ids, failing)]
    half = (len(batch) + 1) // 2
    return [Requeue(tuple(e["key"] for e in batch), half, ids, failing,
                    max(1, min(window, half)))]


def _without(run: Row, quarantined: frozenset[str]) -> Row:
    """A run as the queue counts it: quarantined tests' failures left out, and a run that
    failed only those passed (`excused`: it did not pass every test)."""
    failing = run.get("failing") or ()
    if run["status"] != "failed" or not failing or not set(failing) & quarantined:
        return run
    left = tuple(t for t in failing if t not in quarantined)
    if left:
        return {**run, "failing": left}
    return {**run, "status": "passed", "failing": (), "excused": True}


def _failing_alike(failures: list[Row]) -> set[str]:
    """The tests every one of these runs failed."""
    sets = [set(r.get("failing") or ()) for r in failures]
    return set.intersection(*sets) if sets else set()


def _reproduced(failures: list[Row], flaky: frozenset[str]) -> bool:
    """Two failures of one tree that agree (a test in common that is not known to flake,
    or no names from either), or three in all."""
    if len(failures) >= 3:
        return True
    if len(failures) < 2:
        return False
    last, before = (set(r.get("failing") or ()) for r in failures[-2:])
    return bool((last & before) - flaky) or not (last or before)


def _hinted(batch: list[Row], point: Point) -> bool:
    failing = point.failures[-1].get("failing") or ()
    hinted = sum(1 for e in batch if named_by(failing, e.get("files") or ()))
    return 0 < hinted < len(batch)


def _evict(key: str, run: Row) -> Evict:
    return Evict(key, "tests", run.get("reason") or "tests failed", run.get("output") or "",
                 run["id"])


def _came_back(failed: list[Row], entry: Row, flaky: frozenset[str]) -> bool:
    """Whether the entry's failures, alone on a tree known to pass, are the one that sent it
    here and not a flake: the same tests failed again (tests known to flake do not count),
    and either they are the entry's own (their names point at its files) or they failed
    alike twice more. When the runner names no tests, the same command failed twice more."""
    before = set(entry.get("failed_tests") or ()) - flaky
    names = [set(r.get("failing") or ()) - flaky for r in failed]
    if not before and not any(names):
        return len(failed) >= 2
    agreeing = [n & before for n in names if n & before]
    if not agreeing:
        return len(failed) >= 3  # failing otherwise each time: broken all the same
    return named_by(agreeing[-1], entry.get("files") or ()) or len(agreeing) >= 2


def _batch_size(caps: list[int | None], at: int, size: int) -> int:
    """The batch from position `at` up: the window's size, but entries that came back from a
    failed batch carry a cap (half that batch) and are tested only with each other."""
    if at >= len(caps):
        return size
    first = caps[at]
    if first is not None:
        step = 1
        while step < first and at + step < len(caps) and caps[at + step] == first:
            step += 1
        return step
    step = 1
    while step < size:
        if at + step >= len(caps):
            return size  # it wants entries not linked yet
        if caps[at + step] is not None:
            break
        step += 1
    return step


_WORDS = re.compile(r"[A-Za-z0-9]+")
_GENERIC = {"test", "tests", "py", "init", "main", "src", "lib", "spec", "specs", "unit"}


def named_by(failing: Iterable[str], files: Iterable[str]) -> bool:
    """Whether a failing test's name points at one of the files: the test's module names
    the file's stem or its first words (`tests/test_stats.py::test_mean` names
    `textkit/stats.py` and `textkit/stats_io.py`), or the test file itself is among them."""
    stems = set()
    for name in files:
        path = PurePosixPath(name)
        stems.add(path.stem.lower())
        stems.add(str(path.with_suffix("")).lower())
    for test in failing:
        module = test.split("::", 1)[0]
        if module in files:
            return True
        for word in _test_modules(module):
            if any(stem == word or stem.startswith(word + "_") for stem in stems):
                return True
    return False


def _test_modules(name: str) -> set[str]:
    """`tests/test_stats.py` and `tests.test_stats.StatsTest` both name `stats`."""
    out = set()
    for part in re.split(r"[/.]", name.lower()):
        for prefix in ("test_", "tests_"):
            if part.startswith(prefix) and len(part) > len(prefix):
                out.add(part[len(prefix):])
        if part.endswith("_test") and len(part) > 5:
            out.add(part[:-5])
    return {w for w in out if w not in _GENERIC and _WORDS.fullmatch(w.replace("_", "a"))}
