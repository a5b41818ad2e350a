"""`.factory.toml`: defaults, and errors that name the file, the line, the key and what was
expected."""

from __future__ import annotations

from pathlib import Path

import pytest

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
