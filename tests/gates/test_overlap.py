"""Changes to the same lines are a conflict for the factory even where git merges them: the
overlap gate on the chain's link, and the conflict forecast, on real repositories (a
`merge=union` driver, identical edits, edits a line apart, a removed line reading "-- x")."""

from __future__ import annotations

from pathlib import Path

from agents import events as ev
from agents.conflicts import BranchInfo, ConflictForecaster
from agents.gates.base import GateInput, Verdict, changes_between
from agents.gates.overlap import OverlapGate
from agents.overlap import meet, parse_ranges, same_lines
from tests.conftest import git, make_repo

LINES = "".join(f"line {n}\n" for n in range(1, 11))


def branch(root: Path, name: str, files: dict[str, str], start: str = "main") -> str:
    git(root, "checkout", "-q", "-b", name, start)
    for rel, text in files.items():
        (root / rel).write_text(text)
    git(root, "commit", "-qam", name)
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    return head


def edit(line: int, text: str, body: str = LINES) -> str:
    lines = body.splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    return "".join(lines)


def repo(tmp_path: Path, union: bool = True) -> Path:
    files = {"notes.txt": LINES, "app.py": LINES}
    if union:
        files[".gitattributes"] = "notes.txt merge=union\n"
    return make_repo(tmp_path / "repo", files)


async def link(root: Path, ahead: str, entry: str) -> GateInput:
    """The entry merged onto `ahead` (as the queue links it), with git's own merge."""
    git(root, "checkout", "-q", "--detach", ahead)
    git(root, "merge", "-q", "--no-ff", "--no-edit", entry)
    merged = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    return GateInput(repo=root, tree=root, base=ahead, merged=merged, main=ahead,
                     entry_commit=entry, spec_id="s", task_id="t",
                     changes=await changes_between(root, ahead, merged))


async def test_union_driver_merges_same_lines_and_the_gate_denies(tmp_path: Path) -> None:
    root = repo(tmp_path)
    ahead = branch(root, "a", {"notes.txt": edit(4, "from a")})
    entry = branch(root, "b", {"notes.txt": edit(4, "from b")})
    given = await link(root, ahead, entry)  # git merges it: the union driver keeps both
    merged_text = git(root, "show", f"{given.merged}:notes.txt")
    assert "from a" in merged_text and "from b" in merged_text
    verdict = await OverlapGate().check(given)
    assert verdict.verdict == Verdict.DENY
    [finding] = verdict.findings
    assert (finding.rule, finding.file, finding.line) == ("overlap.same_lines", "notes.txt", 4)
    assert "lines 4" in finding.message


async def test_identical_edits_are_the_same_lines(tmp_path: Path) -> None:
    root = repo(tmp_path, union=False)
    ahead = branch(root, "a", {"app.py": edit(7, "same")})
    entry = branch(root, "b", {"app.py": edit(7, "same")})
    verdict = await OverlapGate().check(await link(root, ahead, entry))
    assert verdict.verdict == Verdict.DENY and verdict.findings[0].line == 7


async def test_edits_apart_pass(tmp_path: Path) -> None:
    root = repo(tmp_path)
    ahead = branch(root, "a", {"notes.txt": edit(2, "from a"), "app.py": edit(9, "a")})
    entry = branch(root, "b", {"notes.txt": edit(6, "from b"), "app.py": edit(3, "b")})
    verdict = await OverlapGate().check(await link(root, ahead, entry))
    assert verdict.verdict == Verdict.PASS, verdict.summary
    assert verdict.findings == []


async def test_an_entry_that_merged_main_in_already_has_nothing_left_to_meet(
        tmp_path: Path) -> None:
    """A revised entry (main merged into it, its own conflict resolved) forked from the
    main it resolved against: the old overlap is not counted again."""
    root = repo(tmp_path)
    ahead = branch(root, "a", {"notes.txt": edit(4, "from a")})
    git(root, "merge", "-q", "--ff-only", ahead)  # main holds a's change
    entry = branch(root, "b", {"notes.txt": edit(8, "from b")})
    verdict = await OverlapGate().check(await link(root, ahead, entry))
    assert verdict.verdict == Verdict.PASS, verdict.summary


async def test_the_forecast_calls_same_lines_a_conflict(tmp_path: Path) -> None:
    root = repo(tmp_path)
    a = branch(root, "a", {"notes.txt": edit(4, "from a")})
    b = branch(root, "b", {"notes.txt": edit(4, "from b")})
    c = branch(root, "c", {"notes.txt": edit(9, "from c")})
    seen: list[ev.Event] = []

    async def emit(event: ev.Event) -> None:
        seen.append(event)

    forecaster = ConflictForecaster(root, emit, tmp_path / "objects")
    checked = {(e.a, e.b): e for e in await forecaster.refresh({
        "a": BranchInfo("a", a, ["notes.txt"]), "b": BranchInfo("b", b, ["notes.txt"]),
        "c": BranchInfo("c", c, ["notes.txt"])})}
    assert checked[("a", "b")].conflicts and checked[("a", "b")].same_lines
    assert checked[("a", "b")].files == ["notes.txt"]
    assert not checked[("a", "c")].conflicts and not checked[("a", "c")].same_lines
    assert not checked[("b", "c")].conflicts


async def test_same_lines_reads_odd_names_and_deleted_files(tmp_path: Path) -> None:
    odd = 'we"ird\tname.txt'
    root = make_repo(tmp_path / "repo", {odd: LINES, "gone.txt": LINES})
    a = branch(root, "a", {odd: edit(5, "a")})
    git(root, "checkout", "-q", "-b", "b", "main")
    (root / odd).write_text(edit(5, "b"))
    (root / "gone.txt").unlink()
    git(root, "commit", "-qam", "b")
    b = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    assert await same_lines(root, a, b) == {odd: [(5, 6)]}


def test_a_removed_line_reading_like_a_header_is_a_line() -> None:
    diff = (b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -3 +2,0 @@\n--- a/y\n"
            b"@@ -8,0 +8 @@\n+new\n")
    assert parse_ranges(diff) == {"x": [(3, 4), (8, 9)]}


def test_ranges_meet_when_they_touch() -> None:
    assert meet([(4, 5)], [(5, 6)]) == [(5, 6)]
    assert meet([(4, 5)], [(7, 8)]) == []
    assert meet([(1, 10)], [(3, 4)]) == [(3, 4)]
