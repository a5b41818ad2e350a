"""What the console remembers and where it writes: the theme given with --theme is kept for
the next start, every theme colours the spec editor too, and a screenshot lands in the
current folder (or the configured one) and the console says where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.color import Color

from console.app import FactoryApp
from console.client import InProcessClient
from console.settings import settings_path
from console.widgets.specs import SpecsPane
from tests.console.test_app import settle

SIZE = (80, 24)


async def test_theme_given_at_start_is_remembered(client: InProcessClient,
                                                  tmp_path: Path) -> None:
    app = FactoryApp(client, theme="factory-light")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
    assert settings_path() == tmp_path / "xdg" / "factory" / "console.json"
    assert json.loads(settings_path().read_text())["theme"] == "factory-light"
    again = FactoryApp(client)  # no --theme: the remembered one
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.theme == "factory-light"


@pytest.mark.parametrize("theme", ["factory-light", "factory-dark", "factory-high-contrast"])
async def test_the_spec_editor_follows_the_theme(client: InProcessClient, theme: str) -> None:
    app = FactoryApp(client, theme=theme)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(SpecsPane)
        await settle(pilot, app, lambda: pane.current is not None)
        surface = Color.parse(app.current_theme.surface or "")
        assert pane.editor.styles.background == surface
        # And after a switch in the running console.
        app.theme = "factory-dark" if theme != "factory-dark" else "factory-light"
        await pilot.pause(0.1)
        assert pane.editor.styles.background == Color.parse(app.current_theme.surface or "")


async def _screenshot(client: InProcessClient) -> list[str]:
    notes: list[str] = []
    app = FactoryApp(client)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, lambda: app.model is not None)
        real = app.notify

        def note(message: str, **kw: object) -> None:
            notes.append(message)
            real(message, **kw)  # type: ignore[arg-type]

        app.notify = note  # type: ignore[method-assign]
        app.deliver_screenshot()
        await settle(pilot, app, lambda: bool(notes))
    return notes


async def test_screenshot_goes_to_the_current_folder(client: InProcessClient, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("HOME", str(tmp_path / "home-without-downloads"))
    notes = await _screenshot(client)
    saved = list(here.glob("*.svg"))
    assert len(saved) == 1 and saved[0].read_text().startswith("<svg")
    assert notes == [f"saved to {saved[0]}"]


async def test_screenshot_goes_to_the_configured_folder(client: InProcessClient,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "shots" / "console"  # made if missing
    settings_path().parent.mkdir(parents=True, exist_ok=True)
    settings_path().write_text(json.dumps({"screenshots": str(folder)}))
    notes = await _screenshot(client)
    saved = list(folder.glob("*.svg"))
    assert len(saved) == 1
    assert notes == [f"saved to {saved[0]}"]
