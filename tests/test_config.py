"""`.factory.toml`: defaults, and errors that name the file, the line, the key and what was
expected."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
from pydantic import BaseModel, Strict

from agents.config import (
    ConfigError,
    FactoryConfig,
    default_config_text,
    find_config,
    init_project,
    load_config,
    save_value,
)
from agents.errors import FactoryError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".factory.toml"
    path.write_text(text)
    return path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.run.concurrency == 4
    assert config.sandbox.backend == "auto"
    assert config.store_path == (tmp_path / ".factory" / "factory.db").resolve()
    assert config.specs_path == (tmp_path / "specs").resolve()


def test_commented_default_round_trips(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, default_config_text()))
    assert loaded.model_dump() == FactoryConfig().model_dump()
    text = default_config_text()
    for section, model in FactoryConfig.model_fields.items():
        if section == "budgets":
            assert all(f"[budgets.{scope}]" in text for scope in ("run", "spec", "agent"))
            continue
        if section == "gates":
            for sub, sub_model in model.annotation.model_fields.items():  # type: ignore[union-attr]
                assert f"[gates.{sub}]" in text
                for key in getattr(sub_model.annotation, "model_fields", {}):
                    assert f"\n{key} = " in text, f"gates.{sub}.{key} missing from the text"
            continue
        assert f"[{section}]" in text
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert f"\n{key} = " in text, f"{section}.{key} missing from the default text"


def test_wrong_type_names_file_line_key_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, '[run]\nconcurrency = 4\nmax_steps = "forty"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 3 and caught.value.key == "run.max_steps"
    assert str(caught.value) == (
        f"{path}:3: run.max_steps: expected an integer, got 'forty'")


def test_nested_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[models]\nplanner = 'x'\n\n[budgets.agent]\nusd = 'ten'\n")
    with pytest.raises(ConfigError, match=r":5: budgets.agent.usd: expected a number"):
        load_config(path)


def test_a_quoted_number_is_an_error_not_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, '[budgets.run]\ntokens = 1000\nusd = "20"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 3 and caught.value.key == "budgets.run.usd"
    assert str(caught.value) == f"{path}:3: budgets.run.usd: expected a number, got '20'"


@pytest.mark.parametrize(("line", "expected"), [
    ("concurrency = true", "run.concurrency: expected an integer, got True"),
    ("concurrency = '4'", "run.concurrency: expected an integer, got '4'"),
    ("concurrency = 4.0", "run.concurrency: expected an integer, got 4.0"),
    ("question_timeout_seconds = '60'",
     "run.question_timeout_seconds: expected a number, got '60'"),
])
def test_numbers_are_not_converted(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f":2: {expected}")):
        load_config(write(tmp_path, f"[run]\n{line}\n"))


def test_an_integer_is_a_number(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[budgets.run]\nusd = 20\n\n[sandbox]\n"
                               "wall_seconds = 60\n"))
    assert config.budgets.run.usd == 20.0 and config.sandbox.wall_seconds == 60.0
    assert load_config(write(tmp_path, '[repo]\ntest_command = "make test"\n')) \
        .repo.test_command == "make test"


def _numbers(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, bool]]:
    """(dotted key, strict) for every number in the configuration's models."""
    for name, info in model.model_fields.items():
        strict = any(isinstance(m, Strict) for m in info.metadata)
        for kind in get_args(info.annotation) or (info.annotation,):
            if get_origin(kind) is Annotated:  # `Int | None`: Strict sits inside the union
                kind, *marks = get_args(kind)
                strict = strict or any(isinstance(m, Strict) for m in marks)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _numbers(kind, f"{prefix}{name}.")
            elif kind in (int, float):
                yield f"{prefix}{name}", strict


def test_every_number_in_the_configuration_is_strict() -> None:
    """A number key added later as a plain int or float would take "20" silently again."""
    numbers = dict(_numbers(FactoryConfig))
    assert {"queue.runners", "queue.resubmits", "budgets.run.usd"} <= set(numbers)
    assert [key for key, strict in numbers.items() if not strict] == []


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[sandbox]\nbackend = "chroot"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 2
    assert "expected one of 'auto', 'bwrap', 'docker' or 'none'" in str(caught.value)


def test_unknown_key_is_an_error_with_the_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[run]\nconcurency = 8\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 2 and caught.value.key == "run.concurency"
    assert "unknown key 'concurency' in [run]; known keys: concurrency" in str(caught.value)


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[run]\nconcurrency = 2\n\n[modles]\nplanner = 'x'\n")
    with pytest.raises(ConfigError, match=r":4: modles: unknown key 'modles' in the top level"):
        load_config(path)


def test_every_error_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "[run]\nconcurrency = 0\nmax_steps = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert ":2: run.concurrency: expected a value >= 1, got 0" in text
    assert ":3: run.max_steps: expected an integer" in text


def test_invalid_toml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[run]\nconcurrency = 4\nmax_steps = = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.line == 3 and "invalid TOML" in str(caught.value)


def test_missing_file_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.factory\.toml: no configuration file here \(run "
                       "`factory init`"):
        load_config(tmp_path / ".factory.toml")


def test_find_config_walks_up(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) == path


def test_init_writes_config_example_and_gitignore_once(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("build/")
    written = init_project(tmp_path)
    assert {p.name for p in written} == {".factory.toml", "example.md", ".gitignore"}
    assert (tmp_path / ".gitignore").read_text() == "build/\n.factory/\n"
    load_config(tmp_path / ".factory.toml")
    with pytest.raises(FactoryError, match="already exists"):
        init_project(tmp_path)
    assert (tmp_path / ".gitignore").read_text().count(".factory/") == 1


def test_save_value_keeps_comments(tmp_path: Path) -> None:
    path = write(tmp_path, default_config_text())
    save_value(path, "run.concurrency", 9)
    text = path.read_text()
    assert "concurrency = 9" in text and "# Agents working at once." in text
    assert load_config(path).run.concurrency == 9
    with pytest.raises(ConfigError):
        save_value(path, "run.concurrency", "many")
    assert load_config(path).run.concurrency == 9  # a bad value is never written
