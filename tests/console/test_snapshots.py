"""How each pane looks at 80x24 and at 200x60, in two themes, and the question dialog and an
empty console at 80x24 (SVG snapshots beside this module)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from console.app import FactoryApp
from tests.console.sample import open_sample

SIZE = (160, 40)
SIZES = {"80x24": (80, 24), "200x60": (200, 60)}
THEMES = ["factory-dark", "factory-light"]


@pytest.fixture
def sample_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "demo"

    def make(theme: str, empty: bool = False) -> FactoryApp:
        return FactoryApp(connect=lambda: open_sample(root, monkeypatch, empty=empty),
                          theme=theme)

    yield make
    time.tzset()


async def _ready(pilot) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    for _ in range(100):
        await pilot.pause(0.05)
        if app.model is not None and app.query_one("#specs-pane").current is not None:
            break
    app.query_one("#spec-editor").cursor_blink = False
    await pilot.pause(0.2)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("keys", [(), ("2", "down", "down"), ("3", "enter"), ("4",), ("5",)],
                         ids=["specs", "agents", "conflicts", "queue", "inbox"])
def test_pane(snap_compare, sample_app, theme: str, keys: tuple[str, ...], size: str) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.5)

    assert snap_compare(sample_app(theme), run_before=before, terminal_size=SIZES[size])


@pytest.mark.parametrize("theme", THEMES)
def test_question_dialog(snap_compare, sample_app, theme: str) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        await pilot.press("5")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        pilot.app.screen.query_one("#reason").cursor_blink = False
        await pilot.pause(0.2)

    assert snap_compare(sample_app(theme), run_before=before, terminal_size=(80, 24))


def test_high_contrast_queue(snap_compare, sample_app) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        await pilot.press("4")
        await pilot.pause(0.3)

    assert snap_compare(sample_app("factory-high-contrast"), run_before=before,
                        terminal_size=SIZE)


@pytest.mark.parametrize("keys", [("2",), ("3",), ("5",)], ids=["agents", "conflicts", "inbox"])
def test_empty_pane(snap_compare, sample_app, keys: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """Before the first run: each pane says what would appear there and how."""
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.5)

    assert snap_compare(sample_app("factory-dark", empty=True), run_before=before,
                        terminal_size=(80, 24))
