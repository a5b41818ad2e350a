"""Theme files: the shipped ones load, and a bad file is skipped with an error that names the
file and the key (the console starts anyway)."""

from __future__ import annotations

from pathlib import Path

from console.themes import THEMES_DIR, load_themes


def test_shipped_themes_load() -> None:
    themes, errors = load_themes(THEMES_DIR)
    assert errors == []
    assert {"factory-dark", "factory-light", "factory-high-contrast"} <= {t.name for t in themes}


def test_bad_theme_files_are_reported_by_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text('name = "mine"\nprimary = "#112233"\n')
    (tmp_path / "unknown.toml").write_text('name = "x"\nprimary = "red"\nshade = "blue"\n')
    (tmp_path / "colour.toml").write_text('name = "y"\nprimary = "not-a-colour"\n')
    (tmp_path / "types.toml").write_text('name = "z"\nprimary = "red"\ndark = "yes"\n')
    (tmp_path / "missing.toml").write_text('dark = false\n')
    (tmp_path / "broken.toml").write_text('name = "w\n')
    themes, errors = load_themes(tmp_path)
    assert [t.name for t in themes] == ["mine"]
    by_file = {Path(e.split(":", 1)[0]).name: e for e in errors}
    assert set(by_file) == {"unknown.toml", "colour.toml", "types.toml", "missing.toml",
                            "broken.toml"}
    assert "shade: unknown key" in by_file["unknown.toml"]
    assert "primary: not a colour: 'not-a-colour'" in by_file["colour.toml"]
    assert "dark: expected true or false, got 'yes'" in by_file["types.toml"]
    assert "name: missing" in by_file["missing.toml"]
    assert "primary: missing" in by_file["missing.toml"]
    assert "invalid TOML" in by_file["broken.toml"]
