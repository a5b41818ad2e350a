"""Conflict forecasting on real git repositories, recorded in a real store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agents import events as ev
from agents.conflicts import BranchInfo, ConflictError, ConflictForecaster, overlapping_pairs
from agents.store import Store
from agents.store.projections import pair_key
from tests.conftest import git, make_repo

# Three regions far enough apart (more than git's 3 lines of context) to merge cleanly.
LINES = [f"line {n}" for n in range(45)]
BASE = {"shared.py": "\n".join(LINES) + "\n", "other.py": "x = 1\n", "pkg/mod.py": "y = 2\n"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", BASE)


@pytest.fixture
def forecaster(repo: Path, store: Store, tmp_path: Path) -> ConflictForecaster:
    return ConflictForecaster(repo, store.append, tmp_path / "scratch")


def edit_line(n: int, text: str) -> dict[str, str]:
    lines = list(LINES)
    lines[n] = text
    return {"shared.py": "\n".join(lines) + "\n"}


def make_branch(repo: Path, name: str, files: dict[str, str], base: str = "main") -> BranchInfo:
    """Commit files on branch name (created from base, or moved if it exists)."""
    start = name if git(repo, "branch", "--list", name).strip() else base
    git(repo, "checkout", "-q", "-B", name, start)
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"work on {name}")
    git(repo, "checkout", "-q", "main")
    head = git(repo, "rev-parse", name).strip()
    changed = git(repo, "diff", "--name-only", f"main...{name}").split()
    return BranchInfo(name, head, changed)


def object_count(repo: Path) -> int:
    stats = dict(line.split(": ") for line in git(repo, "count-objects", "-v").splitlines())
    return int(stats["count"]) + int(stats["in-pack"])


async def events_of(store: Store) -> list[ev.Event]:
    await store.flush()
    return [stored.event for stored in await store.read_events(limit=100_000)]


async def test_same_line_conflicts_in_that_file(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    [checked] = await forecaster.refresh({"a": a, "b": b})
    assert (checked.a, checked.b, checked.a_head, checked.b_head) == ("a", "b", a.head, b.head)
    assert checked.conflicts and checked.files == ["shared.py"]
    assert await events_of(store) == [checked]
    row = store.get("conflicts", pair_key("a", "b"))
    assert row is not None and row["status"] == "conflict" and row["files"] == ["shared.py"]


async def test_distant_hunks_in_the_same_file_merge_cleanly(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    c = make_branch(repo, "c", edit_line(44, "from c"))
    [checked] = await forecaster.refresh({"a": a, "c": c})
    assert not checked.conflicts and checked.files == []
    row = store.get("conflicts", pair_key("a", "c"))
    assert row is not None and row["status"] == "clean"


async def test_disjoint_paths_are_never_merged(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    d = make_branch(repo, "d", {"other.py": "x = 2\n"})
    # A head git has never seen: merging it would fail, so no failure proves no merge ran.
    ghost = BranchInfo("ghost", "1" * 40, ["pkg/mod.py"])
    assert await forecaster.refresh({"a": a, "d": d, "ghost": ghost}) == []
    assert forecaster.runs == 0
    assert await events_of(store) == []
    assert store.rows("conflicts") == []


async def test_a_moved_branch_is_rechecked_and_nothing_else(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    c = make_branch(repo, "c", edit_line(44, "from c"))
    first = await forecaster.refresh({"a": a, "b": b, "c": c})
    assert {(e.a, e.b): e.conflicts for e in first} == {
        ("a", "b"): True, ("a", "c"): False, ("b", "c"): False}
    assert forecaster.runs == 1

    # Nothing moved: no merge, no event.
    assert await forecaster.refresh({"a": a, "b": b, "c": c}) == []
    assert forecaster.runs == 1

    c2 = make_branch(repo, "c", edit_line(0, "c too"))
    second = await forecaster.refresh({"a": a, "b": b, "c": c2})
    assert forecaster.runs == 2
    assert {(e.a, e.b): (e.conflicts, e.a_head, e.b_head) for e in second} == {
        ("a", "c"): (True, a.head, c2.head), ("b", "c"): (True, b.head, c2.head)}
    assert len(await events_of(store)) == 5
    rows = {r["key"]: r for r in store.rows("conflicts")}
    assert rows[pair_key("a", "c")]["status"] == "conflict"
    assert rows[pair_key("a", "c")]["b_head"] == c2.head
    assert rows[pair_key("a", "b")]["status"] == "conflict"


async def test_a_branch_leaving_closes_its_pairs(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    c = make_branch(repo, "c", edit_line(44, "from c"))
    await forecaster.refresh({"a": a, "b": b, "c": c})
    assert await forecaster.refresh({"a": a, "c": c}) == []
    closed = [e for e in await events_of(store) if isinstance(e, ev.ConflictClosed)]
    assert sorted((e.a, e.b) for e in closed) == [("a", "b"), ("b", "c")]
    assert all("b no longer open" in e.reason for e in closed)
    statuses = {r["key"]: r["status"] for r in store.rows("conflicts")}
    assert statuses == {pair_key("a", "b"): "closed", pair_key("b", "c"): "closed",
                        pair_key("a", "c"): "clean"}
    # Closed once: a further refresh says nothing.
    before = len(await events_of(store))
    await forecaster.refresh({"a": a, "c": c})
    assert len(await events_of(store)) == before

    # Coming back opens the pair again.
    back = await forecaster.refresh({"a": a, "b": b, "c": c})
    assert sorted((e.a, e.b) for e in back) == [("a", "b"), ("b", "c")]
    again = store.get("conflicts", pair_key("a", "b"))
    assert again is not None and again["status"] == "conflict"


async def test_a_pair_whose_paths_stop_overlapping_is_closed(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    await forecaster.refresh({"a": a, "b": b})
    b_elsewhere = BranchInfo("b", b.head, ["other.py"])
    assert await forecaster.refresh({"a": a, "b": b_elsewhere}) == []
    [closed] = [e for e in await events_of(store) if isinstance(e, ev.ConflictClosed)]
    assert "no longer overlap" in closed.reason
    row = store.get("conflicts", pair_key("a", "b"))
    assert row is not None and row["status"] == "closed"


async def test_hunks_show_the_conflict_markers(
    repo: Path, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b") | {"other.py": "x = 3\n"})
    c = make_branch(repo, "c", edit_line(44, "from c"))
    hunks = await forecaster.hunks(a.head, b.head)
    assert list(hunks) == ["shared.py"]
    text = hunks["shared.py"]
    assert "<<<<<<<" in text and "=======" in text and ">>>>>>>" in text
    assert "from a" in text and "from b" in text and "line 44" in text
    assert await forecaster.hunks(a.head, c.head) == {}
    with pytest.raises(ConflictError):
        await forecaster.hunks(a.head, "1" * 40)


async def test_a_clean_merge_of_the_same_lines_shows_both_changes(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    # Both make the same edit of line 0 (git merges that cleanly) and each its own elsewhere.
    same = edit_line(0, "from both")["shared.py"]
    a = make_branch(repo, "a", {"shared.py": same, "other.py": "x = 2\n"})
    b = make_branch(repo, "b", {"shared.py": same.replace("line 30", "from b")})
    [checked] = await forecaster.refresh({"a": a, "b": b})
    assert checked.same_lines and checked.files == ["shared.py"]
    hunks = await forecaster.hunks(a.head, b.head)
    assert list(hunks) == ["shared.py"]
    marker, *rest = hunks["shared.py"].splitlines()
    assert marker == (f"<<<<<<< {a.head[:12]}: both change line 1 of the merge base (git "
                      "merges them without a conflict)")
    ours, theirs = "\n".join(rest).split("\n=======\n")
    assert "-line 0\n+from both" in ours and "line 30" not in ours
    assert "-line 0\n+from both" in theirs and "-line 30\n+from b" in theirs
    assert theirs.endswith(f">>>>>>> {b.head[:12]}")


async def test_merges_leave_the_main_object_store_alone(
    repo: Path, forecaster: ConflictForecaster, tmp_path: Path
) -> None:
    branches = {
        "a": make_branch(repo, "a", edit_line(0, "from a")),
        "b": make_branch(repo, "b", edit_line(0, "from b")),
        "c": make_branch(repo, "c", edit_line(44, "from c")),
    }
    before = object_count(repo)
    checked = await forecaster.refresh(branches)
    assert any(e.conflicts for e in checked) and any(not e.conflicts for e in checked)
    assert await forecaster.hunks(branches["a"].head, branches["b"].head)
    assert object_count(repo) == before
    assert git(repo, "fsck", "--no-dangling").strip() == ""
    # The scratch objects are gone too.
    assert list((tmp_path / "scratch").iterdir()) == []


async def test_many_pairs_take_one_merge_tree_process(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    # Branch i edits region i % 3: same region conflicts, different regions merge cleanly.
    branches = {f"b{i:02}": make_branch(repo, f"b{i:02}", edit_line(15 * (i % 3), f"by {i}"))
                for i in range(30)}
    checked = await forecaster.refresh(branches)
    assert forecaster.runs == 1
    assert len(checked) == 30 * 29 // 2
    for e in checked:
        same_region = int(e.a[1:]) % 3 == int(e.b[1:]) % 3
        assert e.conflicts == same_region
        assert e.files == (["shared.py"] if same_region else [])
    await store.flush()
    assert len(store.rows("conflicts")) == 435


async def test_a_broken_pair_does_not_hide_the_others(
    repo: Path, store: Store, forecaster: ConflictForecaster
) -> None:
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    ghost = BranchInfo("ghost", "1" * 40, ["shared.py"])
    checked = await forecaster.refresh({"a": a, "b": b, "ghost": ghost})
    assert [(e.a, e.b, e.conflicts) for e in checked] == [("a", "b", True)]
    notices = [e for e in await events_of(store) if isinstance(e, ev.Notice)]
    assert len(notices) == 2 and all("ghost" in n.message for n in notices)
    # The same broken heads are not retried (nor reported) again.
    runs = forecaster.runs
    assert await forecaster.refresh({"a": a, "b": b, "ghost": ghost}) == []
    assert forecaster.runs == runs
    assert len(await events_of(store)) == 3


async def test_a_restarted_forecaster_remembers_the_projection(
    repo: Path, store: Store, forecaster: ConflictForecaster, tmp_path: Path
) -> None:
    branches = {"a": make_branch(repo, "a", edit_line(0, "from a")),
                "b": make_branch(repo, "b", edit_line(0, "from b"))}
    await forecaster.refresh(branches)
    await store.flush()
    restarted = ConflictForecaster(repo, store.append, tmp_path / "scratch")
    restarted.remember(store.rows("conflicts"))
    assert await restarted.refresh(branches) == []
    assert restarted.runs == 0
    assert await restarted.refresh({"a": branches["a"]}) == []
    closed = store.get("conflicts", pair_key("a", "b"))
    assert closed is not None and closed["status"] == "closed"


def test_overlapping_pairs_indexes_paths() -> None:
    assert overlapping_pairs({
        "b": ["x.py", "y.py"], "a": ["y.py"], "c": ["z.py"], "d": ["x.py"], "e": [],
    }) == [("a", "b"), ("b", "d")]


def test_a_file_replacing_a_directory_overlaps_with_the_directory() -> None:
    assert overlapping_pairs({"a": ["pkg/sub/mod.py"], "b": ["pkg"], "c": ["pkg/sub2"]}) == [
        ("a", "b"), ("b", "c")]


def test_overlapping_pairs_agrees_with_brute_force_at_scale() -> None:
    rng = random.Random(7)
    shared = [f"common/{n}.py" for n in range(40)]
    files = {f"branch{i}": [f"own/{i}/{n}.py" for n in range(5)] + rng.sample(shared, 1)
             for i in range(2000)}
    pairs = overlapping_pairs(files)
    sample = sorted(files)[:300]
    sets = {name: set(files[name]) for name in sample}
    brute = {(a, b) for i, a in enumerate(sample) for b in sample[i + 1:] if sets[a] & sets[b]}
    assert {p for p in pairs if p[0] in sets and p[1] in sets} == brute
    assert all(a < b for a, b in pairs)


async def test_a_repository_path_with_a_colon_still_reads_its_objects(
    tmp_path: Path, store: Store
) -> None:
    # GIT_ALTERNATE_OBJECT_DIRECTORIES splits on colons unless the entry is quoted.
    repo = make_repo(tmp_path / "odd:repo", BASE)
    forecaster = ConflictForecaster(repo, store.append, tmp_path / "scratch")
    a = make_branch(repo, "a", edit_line(0, "from a"))
    b = make_branch(repo, "b", edit_line(0, "from b"))
    before = object_count(repo)
    [checked] = await forecaster.refresh({"a": a, "b": b})
    assert checked.conflicts and checked.files == ["shared.py"]
    assert object_count(repo) == before


def test_leftovers_of_a_crashed_run_are_cleared(tmp_path: Path, store: Store) -> None:
    scratch = tmp_path / "scratch"
    (scratch / "merge-crashed" / "ab").mkdir(parents=True)
    ConflictForecaster(make_repo(tmp_path / "repo", BASE), store.append, scratch)
    assert list(scratch.iterdir()) == []
