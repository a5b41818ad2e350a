"""Spec parsing with exact line numbers, the precision lint, ordering and boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.specs import (
    EXAMPLE_SPEC,
    SpecError,
    lint_score,
    lint_spec,
    load_specs,
    order_specs,
    parse_spec,
    path_in_boundaries,
)


def spec_text(front: str = 'id = "s"\ntitle = "S"', body: str | None = None) -> str:
    body = body if body is not None else (
        "## Goal\nDo one precise thing for the users of this package.\n\n"
        "## Boundaries\n- src/pkg/\n\n## Edge cases\n- empty input\n\n"
        "## Invariants\n- nothing else changes\n\n## Acceptance\n- `pytest -q`\n")
    return f"+++\n{front}\n+++\n\n{body}"


def test_example_parses_and_lints_clean() -> None:
    spec = parse_spec(EXAMPLE_SPEC, Path("specs/example.md"))
    assert spec.id == "greeting" and spec.boundaries == ["app/greeting.py",
                                                         "tests/test_greeting.py"]
    assert spec.acceptance == ["python -m pytest -q tests/test_greeting.py"]
    assert spec.invariants == ["No other module changes.", "`greet` never raises for a "
                               "string argument."]
    assert lint_spec(EXAMPLE_SPEC) == []
    assert lint_score([]) == 100


def test_the_repository_example_is_the_packaged_one() -> None:
    repo_example = Path(__file__).parents[1] / "specs" / "example.md"
    assert repo_example.read_text() == EXAMPLE_SPEC


def test_fenced_acceptance_commands() -> None:
    spec = parse_spec(spec_text(body="## Goal\nA goal of several words here.\n\n"
                                "## Acceptance\n```sh\nmake test\npytest -q x\n```\n"))
    assert spec.acceptance == ["make test", "pytest -q x"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("## Goal\nx\n", 1, "expected TOML front matter starting with '+++'"),
    ('+++\nid = "s"\ntitle = "S"\n## Goal\n', 4, "front matter is not closed"),
    ('+++\nid = "s"\ntitle = \n+++\n', 3, "invalid TOML in front matter"),
    ('+++\ntitle = "S"\n+++\n', 1, "front matter needs 'id'"),
    ('+++\nid = "s"\ntitle = "S"\npriority = "high"\n+++\n', 4,
     "expected an integer, got 'high'"),
    ('+++\nid = "Bad Id"\ntitle = "S"\n+++\n', 2, "expected lowercase letters"),
    ('+++\nid = "s"\ntitle = "S"\nowner = "me"\n+++\n', 4, "unknown front matter key 'owner'"),
])
def test_front_matter_errors_have_lines(text: str, line: int, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("specs/s.md"))
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"specs/s.md:{line}: ")


def test_missing_acceptance_section() -> None:
    text = spec_text(body="## Goal\nSomething precise enough to do.\n")
    with pytest.raises(SpecError, match="missing or empty section '## Acceptance'") as caught:
        parse_spec(text)
    assert caught.value.line == len(text.splitlines())


def test_duplicate_section_names_both_lines() -> None:
    text = spec_text(body="## Goal\na b c d e\n\n## Goal\nagain\n\n## Acceptance\n- `x`\n")
    with pytest.raises(SpecError, match=r"duplicate section '## Goal' \(first at line 6\)") \
            as caught:
        parse_spec(text)
    assert caught.value.line == 9


@pytest.mark.parametrize("entry", ["/etc/passwd", "../other/repo", "src/../../x"])
def test_boundaries_must_stay_in_the_repository(entry: str) -> None:
    body = (f"## Goal\nA goal that is long enough.\n\n## Boundaries\n- src/\n- {entry}\n\n"
            "## Acceptance\n- `true`\n")
    with pytest.raises(SpecError, match="expected a path relative") as caught:
        parse_spec(spec_text(body=body))
    assert caught.value.line == 11


def test_lint_reports_imprecision_with_lines() -> None:
    body = ("## Goal\nMake it faster, etc.\n\n## Architecture\nMaybe a cache, as needed.\n\n"
            "## Notes\nTBD\n\n## Acceptance\nRun the tests somehow.\n")
    findings = lint_spec(spec_text(body=body))
    got = {(f.line, f.code) for f in findings}
    assert {(7, "vague-word"), (10, "vague-word"), (12, "unknown-section"), (13, "vague-word"),
            (16, "vague-word")} <= got
    assert sum(f.line == 10 for f in findings) == 2  # "Maybe" and "as needed"
    codes = {f.code for f in findings}
    assert {"no-invariants", "no-acceptance-command", "no-boundaries", "no-edge-cases",
            "short-goal"} <= codes
    assert lint_score(findings) < 50


def test_lint_never_raises_on_a_broken_spec() -> None:
    findings = lint_spec("no front matter at all")
    assert [(f.line, f.severity, f.code) for f in findings] == [(1, "error", "parse")]


def test_vague_words_inside_code_are_not_flagged() -> None:
    body = ("## Goal\nUse the `etc` folder for configuration files.\n\n## Boundaries\n- etc/\n\n"
            "## Edge cases\n- none\n\n## Invariants\n- stable\n\n## Acceptance\n- `true`\n")
    assert [f for f in lint_spec(spec_text(body=body)) if f.code == "vague-word"] == []


def write_spec(folder: Path, name: str, front: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(spec_text(front))


def test_load_specs_checks_ids_and_dependencies(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write_spec(specs, "a.md", 'id = "a"\ntitle = "A"')
    write_spec(specs, "b.md", 'id = "b"\ntitle = "B"\ndepends_on = ["a"]')
    (specs / "README.md").write_text("not a spec")
    assert [s.id for s in load_specs(specs)] == ["a", "b"]
    write_spec(specs, "c.md", 'id = "c"\ntitle = "C"\ndepends_on = ["zzz"]')
    with pytest.raises(SpecError, match=r"c\.md:4: depends_on: depends on unknown spec 'zzz'"):
        load_specs(specs)
    write_spec(specs, "c.md", 'id = "a"\ntitle = "C"')
    with pytest.raises(SpecError, match="duplicate spec id 'a'"):
        load_specs(specs)


def test_dependency_cycle_is_named(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write_spec(specs, "a.md", 'id = "a"\ntitle = "A"\ndepends_on = ["b"]')
    write_spec(specs, "b.md", 'id = "b"\ntitle = "B"\ndepends_on = ["a"]')
    with pytest.raises(SpecError, match="dependency cycle: a -> b -> a"):
        load_specs(specs)


def test_order_specs_by_dependency_then_priority(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write_spec(specs, "a.md", 'id = "a"\ntitle = "A"\ndepends_on = ["c"]\npriority = 9')
    write_spec(specs, "b.md", 'id = "b"\ntitle = "B"\npriority = 5')
    write_spec(specs, "c.md", 'id = "c"\ntitle = "C"\npriority = 1')
    write_spec(specs, "d.md", 'id = "d"\ntitle = "D"\npriority = 5')
    assert [s.id for s in order_specs(load_specs(specs))] == ["b", "d", "c", "a"]


@pytest.mark.parametrize(("path", "inside"), [
    ("src/pkg/a.py", True), ("src/pkg", True), ("src/pkgextra/a.py", False),
    ("tests/test_x.py", True), ("tests/test_y.py", False), ("docs/a/b/c.md", True),
    ("docs/a.txt", False), ("../src/pkg/a.py", False), ("/src/pkg/a.py", False),
])
def test_path_in_boundaries(path: str, inside: bool) -> None:
    assert path_in_boundaries(path, ["src/pkg/", "tests/test_x.py", "docs/**/*.md"]) is inside
