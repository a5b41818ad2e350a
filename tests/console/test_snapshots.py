"""How each pane looks, in two themes (SVG snapshots beside this module)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from console.app import FactoryApp
from tests.console.sample import open_sample

SIZE = (160, 40)
THEMES = ["factory-dark", "factory-light"]


@pytest.fixture
def sample_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "demo"

    def make(theme: str) -> FactoryApp:
        return FactoryApp(connect=lambda: open_sample(root, monkeypatch), theme=theme)

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


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("keys", [(), ("2", "down", "down"), ("3",), ("4",), ("5",)],
                         ids=["specs", "agents", "conflicts", "queue", "inbox"])
def test_pane(snap_compare, sample_app, theme: str, keys: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.5)

    assert snap_compare(sample_app(theme), run_before=before, terminal_size=SIZE)


def test_high_contrast_queue(snap_compare, sample_app) -> None:  # type: ignore[no-untyped-def]
    async def before(pilot) -> None:  # type: ignore[no-untyped-def]
        await _ready(pilot)
        await pilot.press("4")
        await pilot.pause(0.3)

    assert snap_compare(sample_app("factory-high-contrast"), run_before=before,
                        terminal_size=SIZE)
