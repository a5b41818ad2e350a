"""`factory spec lint` on a folder reports every error a run would refuse — duplicate ids,
unknown dependencies, dependency cycles, bad ids, files that do not parse — each with its
file and line, where a run (`load_specs`) stops at the first. A spec that does not parse
scores 0 wherever a score is shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.specs import SpecError, lint_folder, lint_score, lint_spec, load_specs


def spec(sid: str, deps: list[str] | None = None, title: str = "T") -> str:
    listed = ", ".join(f'"{d}"' for d in deps or [])
    return (f'+++\nid = "{sid}"\ntitle = "{title}"\ndepends_on = [{listed}]\n+++\n\n'
            "## Goal\nAdd one function that callers use to greet a person.\n\n"
            "## Boundaries\n- app/x.py\n\n## Edge cases\n- An empty name.\n\n"
            "## Invariants\n- Nothing else changes.\n\n"
            "## Acceptance\n- `python -m pytest -q`\n")


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def factory(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "COLUMNS": "200"},
                          timeout=120)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A folder with one of each thing a run refuses (and two cycles, two unknown deps)."""
    return write(tmp_path / "specs", {
        "a.md": spec("a", ["b"]),
        "b.md": spec("b", ["a"]),              # cycle a -> b -> a
        "c.md": spec("c", ["d"]),
        "d.md": spec("d", ["e"]),
        "e.md": spec("e", ["c", "nowhere"]),   # cycle c -> d -> e -> c, and unknown nowhere
        "f.md": spec("f", ["ghost"]),          # unknown ghost
        "dup1.md": spec("same"),
        "dup2.md": spec("same"),               # duplicate id
        "bad.md": spec("Bad_Id"),              # a bad id: does not parse
        "torn.md": "+++\nid = \"torn\"\ntitle = \n+++\n",  # invalid TOML
        "g.md": spec("g", ["torn"]),           # depends on a spec that does not parse
        "README.md": "not a spec\n",
    })


def test_a_run_stops_at_the_first_error_lint_reports_them_all(broken: Path) -> None:
    with pytest.raises(SpecError):
        load_specs(broken)
    files = sorted(p for p in broken.glob("*.md") if p.name != "README.md")
    found = lint_folder([(p, p.read_text()) for p in files])
    by = {(f.path.name if f.path else "", f.code) for f in found}
    assert all(f.severity == "error" for f in found)
    assert {("dup1.md", "duplicate-id"), ("dup2.md", "duplicate-id")} <= by
    assert {("e.md", "unknown-dependency"), ("f.md", "unknown-dependency")} <= by
    assert {("a.md", "dependency-cycle"), ("b.md", "dependency-cycle"), ("c.md",
            "dependency-cycle"), ("d.md", "dependency-cycle"), ("e.md", "dependency-cycle")} <= by
    # A spec that does not parse is reported by its own lint, not again as unknown.
    assert ("g.md", "unknown-dependency") not in by
    cycles = {f.message for f in found if f.code == "dependency-cycle"}
    assert cycles == {"dependency cycle: a -> b -> a", "dependency cycle: c -> d -> e -> c"}
    e = (broken / "e.md").read_text().splitlines()
    ghost = next(f for f in found if f.code == "unknown-dependency" and f.path.name == "e.md")
    assert "nowhere" in e[ghost.line - 1] and "'nowhere'" in ghost.message
    dup = next(f for f in found if f.code == "duplicate-id" and f.path.name == "dup1.md")
    assert dup.line == 2 and "dup2.md" in dup.message


def test_a_spec_that_does_not_parse_scores_zero() -> None:
    for text in ('+++\nid = "Bad_Id"\ntitle = "T"\n+++\n\n## Goal\nx\n\n## Acceptance\n- `t`\n',
                 "no front matter at all\n"):
        findings = lint_spec(text)
        assert [f.code for f in findings] == ["parse"]
        assert lint_score(findings) == 0  # one error would otherwise be 70
    assert lint_score(lint_spec(spec("fine"))) == 100


def test_cli_lints_a_folder_with_files_and_lines(broken: Path) -> None:
    done = factory("spec", "lint", str(broken), cwd=broken.parent)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert f"{broken}/bad.md: precision 0/100" in lines
    assert f"{broken}/torn.md: precision 0/100" in lines
    assert any(line.startswith(f"  {broken}/dup2.md:2: error duplicate-id: duplicate spec id "
                               "'same'") for line in lines)
    assert any(line.startswith(f"  {broken}/f.md:4: error unknown-dependency: depends on "
                               "unknown spec 'ghost'") for line in lines)
    assert f"  {broken}/b.md:4: error dependency-cycle: dependency cycle: a -> b -> a" in lines
    assert any(line.startswith(f"  {broken}/bad.md:2: error parse: spec id 'Bad_Id'")
               for line in lines)
    assert not any("README" in line for line in lines)

    as_json = json.loads(factory("spec", "lint", "--json", str(broken),
                                 cwd=broken.parent).stdout)
    assert not as_json["ok"]
    specs = {Path(s["path"]).name: s for s in as_json["specs"]}
    assert specs["bad.md"]["score"] == 0 and not specs["bad.md"]["parses"]
    assert specs["a.md"]["score"] == 70  # clean but for the cycle it is in
    assert sorted(f["code"] for f in specs["e.md"]["findings"]) == ["dependency-cycle",
                                                                     "unknown-dependency"]


def test_a_clean_folder_and_a_file_named_alone(tmp_path: Path) -> None:
    folder = write(tmp_path / "specs", {"a.md": spec("a"), "b.md": spec("b", ["a"])})
    assert lint_folder([(p, p.read_text()) for p in sorted(folder.glob("*.md"))]) == []
    done = factory("spec", "lint", str(folder), cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    # A file named by itself is linted alone: its dependencies live in its folder.
    alone = factory("spec", "lint", str(folder / "b.md"), cwd=tmp_path)
    assert alone.returncode == 0 and "precision 100/100" in alone.stdout
