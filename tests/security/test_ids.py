"""Ids that would break a branch, folder, agent or cgroup name are refused where they come in.

Spec ids and their depends_on (parse_spec, lint_spec, load_specs and the real `factory spec
lint`), and a planner's task ids and depends_on (validate_plan, PlanCollector): each bad id
is a located, readable error, never a traceback; the good ids the project uses still pass.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from agents.ids import (
    EXPECTED,
    MAX_LENGTH,
    SCHEMA_PATTERN,
    Id,
    IdError,
    check_id,
    id_error,
    is_id,
    show,
)
from agents.planner import SUBMIT_PLAN_SPEC, PlanCollector, PlanError, validate_plan
from agents.specs import EXAMPLE_SPEC, Spec, SpecError, lint_spec, load_specs, parse_spec

FACTORY = Path(sys.executable).with_name("factory")

# (a bad id, words its message must use for what was found)
BAD: list[tuple[str, str]] = [
    ("spec\n", "a newline at position 5 (the end)"),
    ("\nspec", "a newline at position 1 (the start)"),
    ("spec\n\n", "a newline at position 5"),
    ("spec\r", "a carriage return at position 5 (the end)"),
    ("spec\r\n", "a carriage return at position 5 and a newline at position 6 (the end)"),
    (" spec", "a space at position 1 (the start)"),
    ("spec ", "a space at position 5 (the end)"),
    ("spec\t", "a tab at position 5 (the end)"),
    ("sp ec", "a space at position 3"),
    ("sp\x00ec", "a NUL byte at position 3"),
    ("spec\x00", "a NUL byte at position 5 (the end)"),
    ("\x1b[31mred", "a control character U+001B"),
    ("spec\u2028", "U+2028"),
    ("Spec", "an uppercase letter 'S' at position 1 (the start)"),
    ("SPEC", "an uppercase letter 'S' at position 1"),
    ("spEc", "an uppercase letter 'E' at position 3"),
    ("\u0430pi", "a non-ASCII character U+0430 (CYRILLIC SMALL LETTER A) at position 1"),
    ("sp\u0435c", "U+0435 (CYRILLIC SMALL LETTER IE) at position 3"),
    ("api\u2010v2", "U+2010 (HYPHEN) at position 4"),
    ("\uff53pec", "U+FF53 (FULLWIDTH LATIN SMALL LETTER S)"),
    ("caf\u00e9", "U+00E9 (LATIN SMALL LETTER E WITH ACUTE)"),
    ("..", "'.' (FULL STOP) at position 1 (the start)"),
    ("a..b", "'.' (FULL STOP) at position 2"),
    ("a.b", "'.' (FULL STOP) at position 2"),
    ("../etc", "'.' (FULL STOP) at position 1 (the start) and '/' (SOLIDUS) at position 3"),
    ("a/b", "'/' (SOLIDUS) at position 2"),
    ("/abs", "'/' (SOLIDUS) at position 1 (the start)"),
    ("a\\b", "'\\\\' (REVERSE SOLIDUS) at position 2"),
    ("a_b", "'_' (LOW LINE) at position 2"),
    ("a--b", "'--' at position 2"),
    ("a---b", "'--' at position 2"),
    ("-spec", "a leading hyphen"),
    ("spec-", "a trailing hyphen"),
    ("-", "a leading hyphen"),
    ("--", "a leading hyphen, a trailing hyphen and '--' at position 1"),
    ("a" * (MAX_LENGTH + 1), f"{MAX_LENGTH + 1} characters"),
    ("ab-" * 16 + "c", "49 characters"),
    ("a" * 300, "300 characters"),
    ("x" * 299 + "\n", "a newline at position 300 (the end) and 300 characters"),
    ("", "an empty id"),
    ("[/x]", "'\\x5b' (LEFT SQUARE BRACKET) at position 1"),
    ("[bold]x", "LEFT SQUARE BRACKET"),
    ("{0}{message}", "'{' (LEFT CURLY BRACKET) at position 1"),
]
GOOD = ["a", "0", "s", "a-b", "stats", "unicode-words", "fast-count", "x1-2y", "v2",
        "a" * MAX_LENGTH, "ab-" * 15 + "abc", "-".join("a" * 24)[:47]]
IDS = [v for v, _ in BAD]


def _name(value: str) -> str:
    return show(value)[:30]


# -- the rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", GOOD)
def test_good_ids_pass(value: str) -> None:
    assert len(value) <= MAX_LENGTH
    assert is_id(value) and id_error(value) is None and check_id(value) == value


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_bad_ids_say_what_was_found(value: str, found: str) -> None:
    message = id_error(value, "spec id")
    assert message is not None and not is_id(value)
    assert message.startswith(f"spec id {show(value)}: expected {EXPECTED}; found ")
    assert found in message, message
    with pytest.raises(IdError) as caught:
        check_id(value)
    assert str(caught.value) == id_error(value)


@pytest.mark.parametrize("value", IDS, ids=[_name(v) for v in IDS])
def test_messages_are_plain_bounded_ascii(value: str) -> None:
    """The message is printed by Rich (CLI) and Textual (console) and sent to a model: no
    control characters, no look-alikes, no markup, and not 300 characters of echo."""
    message = id_error(value)
    assert message is not None
    assert message.isascii() and message.isprintable()
    assert "[" not in message and "]" not in message
    assert len(message) < 400


def test_non_strings_are_refused_in_words() -> None:
    assert id_error(7) == f"id (int): expected {EXPECTED}; found an int, not a string"
    assert "a NoneType, not a string" in (id_error(None) or "")
    assert "a list, not a string" in (id_error(["a"]) or "")


@pytest.mark.parametrize("value", GOOD + IDS, ids=[_name(v) for v in GOOD + IDS])
def test_the_schema_pattern_agrees_with_the_rule(value: str) -> None:
    """Models are shown SCHEMA_PATTERN and maxLength; pydantic-core runs them in Rust regex,
    where `$` is the very end. They must accept exactly what the rule accepts."""

    class Pattern(BaseModel):
        v: str = Field(pattern=SCHEMA_PATTERN, max_length=MAX_LENGTH)

    try:
        Pattern(v=value)
        by_pattern = True
    except ValidationError:
        by_pattern = False
    assert by_pattern is is_id(value)
    # Python's `re` with `$` would accept a trailing newline: the rule uses fullmatch.
    assert (re.fullmatch(SCHEMA_PATTERN[1:-1], value) is not None
            and len(value) <= MAX_LENGTH) is is_id(value)


def test_the_pydantic_type_uses_the_message() -> None:
    class Model(BaseModel):
        id: Id
        deps: list[Id] = []

    assert Model(id="a-b", deps=["c"]).id == "a-b"
    with pytest.raises(ValidationError) as caught:
        Model(id="ok", deps=["fine", "b\n"])
    (error,) = caught.value.errors()
    assert error["loc"] == ("deps", 1)
    assert error["msg"] == id_error("b\n")  # no "Value error, " prefix, braces untouched
    with pytest.raises(ValidationError) as caught:
        Model(id="{message}")
    assert caught.value.errors()[0]["msg"] == id_error("{message}")
    schema = Model.model_json_schema()["properties"]
    assert schema["id"]["pattern"] == SCHEMA_PATTERN
    assert schema["id"]["maxLength"] == MAX_LENGTH
    assert schema["deps"]["items"]["pattern"] == SCHEMA_PATTERN


def test_joined_names_split_back_and_fit() -> None:
    """The reasons for the rule: `<spec>--<task>` folders cannot collide, and names built
    from the longest ids fit file-name and ref limits."""
    assert not is_id("a--b") and not is_id("b--c")  # a--b + c vs a + b--c: one folder
    for spec, task in [("a", "b"), ("a-b", "c"), ("a", "b-c"), ("x" * 48, "y" * 48)]:
        assert f"{spec}--{task}".split("--") == [spec, task]
        assert f"{spec}.{task}.1".split(".") == [spec, task, "1"]
    longest = "x" * MAX_LENGTH
    assert len(f"{longest}--{longest}".encode()) <= 255 - len(".lock")
    assert len(f"factory-{(longest + '.' + longest + '.99')[:40]}-4194304-999".encode()) < 255


@pytest.mark.parametrize("value", GOOD)
def test_good_ids_make_valid_refs(value: str) -> None:
    ref = f"refs/heads/factory/{value}/{value}"
    assert subprocess.run(["git", "check-ref-format", ref], check=False).returncode == 0


# -- spec ids --------------------------------------------------------------------------------


def spec_text(front: str) -> str:
    return (f"+++\n{front}\n+++\n\n## Goal\nDo one precise thing for the users of this "
            "package.\n\n## Boundaries\n- src/\n\n## Edge cases\n- empty input\n\n"
            "## Invariants\n- nothing else changes\n\n## Acceptance\n- `pytest -q`\n")


def toml(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (\\n, \\r, \\u0000, \\u0430, ...)."""
    return json.dumps(value)


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_bad_spec_ids_are_located_errors(value: str, found: str) -> None:
    text = spec_text(f"id = {toml(value)}\ntitle = \"S\"")
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("specs/s.md"))
    assert caught.value.line == 2
    assert str(caught.value).startswith("specs/s.md:2: id: spec id ")
    assert found in caught.value.message and EXPECTED in caught.value.message


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_the_lint_reports_bad_spec_ids(value: str, found: str) -> None:
    text = spec_text(f"title = \"S\"\nid = {toml(value)}")
    findings = lint_spec(text, Path("specs/s.md"))
    assert [(f.line, f.severity, f.code) for f in findings] == [(3, "error", "parse")]
    assert findings[0].message.startswith(f"spec id {show(value)}: expected")
    assert found in findings[0].message


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_bad_depends_on_entries_are_located(value: str, found: str) -> None:
    text = spec_text(f'id = "s"\ntitle = "S"\ndepends_on = [\n  "a",\n  {toml(value)},\n]')
    with pytest.raises(SpecError) as caught:
        parse_spec(text, Path("specs/s.md"))
    assert caught.value.line == 6  # the entry's own line in a multi-line array
    assert caught.value.message.startswith(f"depends_on entry 2 {show(value)}: expected ")
    assert found in caught.value.message
    inline = spec_text(f'id = "s"\ntitle = "S"\ndepends_on = ["a", {toml(value)}]')
    (finding,) = lint_spec(inline)
    assert (finding.line, finding.code) == (4, "parse") and found in finding.message


def test_literal_toml_strings_are_located_too() -> None:
    text = spec_text("id = 's'\ntitle = 'S'\ndepends_on = [\n  'a',\n  'B',\n]")
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    assert caught.value.line == 6 and "an uppercase letter 'B'" in caught.value.message


def test_a_spec_cannot_depend_on_itself() -> None:
    with pytest.raises(SpecError, match="spec 's' depends on itself") as caught:
        parse_spec(spec_text('id = "s"\ntitle = "S"\ndepends_on = ["s"]'))
    assert caught.value.line == 4


@pytest.mark.parametrize("value", GOOD)
def test_good_spec_ids_round_trip(value: str) -> None:
    dep = "b" if value == "a" else "a"
    spec = parse_spec(spec_text(f'id = "{value}"\ntitle = "S"\ndepends_on = ["{dep}"]'))
    assert spec.id == value and spec.depends_on == [dep]
    assert lint_spec(spec.text) == []


def test_a_spec_made_directly_is_checked_too() -> None:
    with pytest.raises(ValidationError):
        Spec(id="s\n", title="S")
    with pytest.raises(ValidationError):
        Spec(id="s", title="S", depends_on=["a--b"])


def write(folder: Path, name: str, front: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(spec_text(front))
    return path


def test_load_specs_names_the_file_with_the_bad_id(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write(specs, "a.md", 'id = "a"\ntitle = "A"')
    bad = write(specs, "b.md", 'id = "b\\n"\ntitle = "B"')
    with pytest.raises(SpecError) as caught:
        load_specs(specs)
    assert str(caught.value).startswith(f"{bad}:2: id: spec id 'b\\n': expected ")


def test_load_specs_unknown_and_duplicate_ids(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write(specs, "a.md", 'id = "a"\ntitle = "A"')
    dep = write(specs, "b.md", 'id = "b"\ntitle = "B"\ndepends_on = ["a", "zzz"]')
    with pytest.raises(SpecError) as caught:
        load_specs(specs)
    assert str(caught.value) == (f"{dep}:4: depends_on: depends on unknown spec 'zzz' "
                                 "(known: a, b)")
    dep.unlink()
    first = specs / "a.md"
    again = write(specs, "c.md", 'id = "a"\ntitle = "C"')
    with pytest.raises(SpecError) as caught:
        load_specs(specs)
    assert str(caught.value) == f"{again}:2: id: duplicate spec id 'a' (also in {first})"


def test_the_project_ids_satisfy_the_rule() -> None:
    """The example, the demo's specs and the demo planner's tasks: the rule refuses none."""
    from agents.demo import FILES, trajectory

    texts = {name: text for name, text in FILES.items() if name.startswith("specs/")}
    specs = {name: parse_spec(text, Path(name)) for name, text in texts.items()}
    assert sorted(s.id for s in specs.values()) == ["cli", "slug", "stats"]
    assert parse_spec(EXAMPLE_SPEC).id == "greeting"
    by_id = {s.id: s for s in specs.values()}
    planned = 0
    for key, turns in trajectory()["agents"].items():
        for turn in turns:
            for call in turn["tool_calls"]:
                if call["name"] == "submit_plan":
                    tasks = validate_plan(by_id[key.removeprefix("plan:")], call["arguments"])
                    assert all(is_id(t.id) for t in tasks)
                    planned += len(tasks)
    assert planned == 7


# -- the real CLI ----------------------------------------------------------------------------


def lint_cli(cwd: Path, *names: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "400"}
    return subprocess.run([str(FACTORY), "spec", "lint", *names], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_factory_spec_lint_reports_every_bad_id(tmp_path: Path) -> None:
    names = []
    for number, value in enumerate(IDS):
        name = f"bad{number}.md"
        (tmp_path / name).write_text(spec_text(f"id = {toml(value)}\ntitle = \"S\""))
        names.append(name)
    (tmp_path / "dep.md").write_text(
        spec_text('id = "ok"\ntitle = "S"\ndepends_on = [\n  "a",\n  "a--b",\n]'))
    (tmp_path / "good.md").write_text(spec_text('id = "unicode-words"\ntitle = "S"'))
    done = lint_cli(tmp_path, *names, "dep.md", "good.md")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "Error" not in output
    for name, value in zip(names, IDS, strict=True):
        assert f"  {name}:2: error parse: spec id {show(value)}: expected {EXPECTED}; found" \
            in done.stdout, (name, output)
    assert "  dep.md:6: error parse: depends_on entry 2 'a--b': expected " in done.stdout
    assert "good.md: precision 100/100" in done.stdout


@pytest.mark.parametrize("value", ["spec\n", "Spec", "a" * 300, "\u0430pi", "[/x]"],
                         ids=["newline", "upper", "long", "cyrillic", "markup"])
def test_factory_spec_lint_one_bad_file(tmp_path: Path, value: str) -> None:
    (tmp_path / "s.md").write_text(spec_text(f"id = {toml(value)}\ntitle = \"S\""))
    done = lint_cli(tmp_path, "s.md")
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    assert f"s.md:2: error parse: spec id {show(value)}: expected" in done.stdout


# -- plan task ids ---------------------------------------------------------------------------


PLAN_SPEC = parse_spec(spec_text('id = "s"\ntitle = "S"'))


def task(id_: Any, **kw: Any) -> dict[str, Any]:
    return {"id": id_, "title": "T", "paths": ["src/a.py"], "acceptance": ["pytest -q"], **kw}


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_bad_task_ids_are_plan_rejections(value: str, found: str) -> None:
    with pytest.raises(PlanError) as caught:
        validate_plan(PLAN_SPEC, {"tasks": [task("ok"), task(value)]})
    message = str(caught.value)
    assert message.startswith("the plan does not match its schema: tasks.1.id: id ")
    assert f"expected {EXPECTED}; found " in message and found in message
    collector = PlanCollector(PLAN_SPEC)
    outcome = collector({"tasks": [task(value)]})
    assert outcome.is_error and not outcome.finished and collector.tasks is None
    assert outcome.content.startswith("plan rejected: ") and found in outcome.content


@pytest.mark.parametrize(("value", "found"), BAD, ids=[_name(v) for v in IDS])
def test_bad_task_dependencies_are_plan_rejections(value: str, found: str) -> None:
    plan = {"tasks": [task("a"), task("b", depends_on=["a", value])]}
    with pytest.raises(PlanError) as caught:
        validate_plan(PLAN_SPEC, plan)
    assert "tasks.1.depends_on.1: id " in str(caught.value) and found in str(caught.value)
    assert PlanCollector(PLAN_SPEC)(plan).is_error


@pytest.mark.parametrize("value", [7, None, ["a"], {"id": "a"}, 1.5, True])
def test_task_ids_of_other_types_are_rejected(value: Any) -> None:
    outcome = PlanCollector(PLAN_SPEC)({"tasks": [task(value), task("b", depends_on=[value])]})
    assert outcome.is_error and "tasks.0.id" in outcome.content


def test_a_flood_of_bad_ids_gives_a_bounded_rejection() -> None:
    plan = {"tasks": [task(f"T{n}" + "x" * 300, depends_on=["Y" * 300] * 5)
                      for n in range(50)]}
    with pytest.raises(PlanError) as caught:
        validate_plan(PLAN_SPEC, plan)
    assert len(str(caught.value)) < 6000 and "more" in str(caught.value)


@pytest.mark.parametrize("value", GOOD)
def test_good_task_ids_round_trip(value: str) -> None:
    other = "z" if value != "z" else "y"
    tasks = validate_plan(PLAN_SPEC, {"tasks": [task(other), task(value, depends_on=[other])]})
    assert [t.id for t in tasks] == [other, value] and tasks[1].depends_on == [other]


def test_the_tool_schema_shows_the_rule() -> None:
    props = SUBMIT_PLAN_SPEC["function"]["parameters"]["$defs"]["_PlanTask"]["properties"]
    for schema in (props["id"], props["depends_on"]["items"]):
        assert schema["pattern"] == SCHEMA_PATTERN and schema["maxLength"] == MAX_LENGTH
    assert EXPECTED in props["id"]["description"]


def test_check_id_fails_as_a_factory_error() -> None:
    """Code that builds a name with check_id gets an error the CLI prints plainly."""
    from agents.errors import FactoryError

    with pytest.raises(FactoryError, match=r"^task id 'a\\n': expected "):
        check_id("a\n", "task id")
