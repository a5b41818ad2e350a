"""Theme files (themes/*.toml) parsed strictly and turned into Textual themes."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

THEMES_DIR = Path(__file__).resolve().parent.parent / "themes"
DEFAULT_THEME = "factory-dark"
_COLOURS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
            "success", "warning", "error")
_KEYS = ("name", "dark", "variables", *_COLOURS)


class ThemeFileError(ValueError):
    pass


def parse_theme(data: dict[str, Any], path: Path) -> Theme:
    """A theme file's table checked strictly: unknown keys, wrong types and colours Textual
    cannot parse are errors naming the file and the key. (Plain checks rather than a pydantic
    model: pydantic would add half a second to the console's start on these machines.)"""
    problems = [f"{key}: unknown key (expected one of {', '.join(_KEYS)})"
                for key in data if key not in _KEYS]
    for key in ("name", "primary"):
        if key not in data:
            problems.append(f"{key}: missing (required)")
    if not isinstance(data.get("name", ""), str) or data.get("name") == "":
        problems.append("name: expected a non-empty string")
    if not isinstance(data.get("dark", True), bool):
        problems.append(f"dark: expected true or false, got {data['dark']!r}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
            isinstance(v, str) for v in variables.values()):
        problems.append("variables: expected a table of strings")
    for key in _COLOURS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{key}: expected a colour string, got {value!r}")
            continue
        try:
            Color.parse(value)
        except ColorParseError:
            problems.append(f"{key}: not a colour: {value!r}")
    if problems:
        raise ThemeFileError(f"{path}: {'; '.join(problems)}")
    return Theme(name=data["name"], dark=data.get("dark", True), variables=dict(variables),
                 **{k: data.get(k) for k in _COLOURS})


def load_themes(folder: Path = THEMES_DIR) -> tuple[list[Theme], list[str]]:
    """Every valid theme in folder, and an error line for each file that is not."""
    themes, errors = [], []
    for path in sorted(folder.glob("*.toml")):
        try:
            themes.append(parse_theme(tomllib.loads(path.read_text(encoding="utf-8")), path))
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"{path}: invalid TOML: {exc}")
        except (OSError, ThemeFileError) as exc:
            errors.append(str(exc))
    return themes, errors
