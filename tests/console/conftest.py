"""A demo factory stopped with every branch waiting for approval, copied fresh per test.

Running the demo once per session (litellm's import alone takes seconds) and copying its
folder keeps each console test on its own real git repository and real store.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agents import demo
from agents.config import load_config
from agents.engine import Factory
from console.client import InProcessClient

ENTRIES = 7


async def _run_until_awaiting(root: Path) -> None:
    config = load_config(root / ".factory.toml")
    config.queue.approval = "always"
    factory = await Factory.open(root, config)
    run = asyncio.create_task(factory.run())
    try:
        async with asyncio.timeout(180):
            while sum(q["status"] == "awaiting_approval"
                      for q in factory.store.rows("queue")) < ENTRIES:
                if run.done():
                    run.result()
                    raise AssertionError("the demo run ended before its branches queued")
                await asyncio.sleep(0.05)
    finally:
        run.cancel()
        try:
            await run
        except asyncio.CancelledError:
            pass
        await factory.close()


@pytest.fixture(scope="session")
def awaiting_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = demo.build(tmp_path_factory.mktemp("console") / "demo", "none")
    asyncio.run(_run_until_awaiting(root))
    return root


@pytest.fixture
def demo_root(awaiting_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(awaiting_demo, root, symlinks=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return root


@asynccontextmanager
async def open_client(root: Path) -> AsyncIterator[InProcessClient]:
    """A console's client over a demo folder, every branch waiting for approval."""
    config = load_config(root / ".factory.toml")
    config.queue.approval = "always"
    c = InProcessClient(await Factory.open(root, config))
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def client(demo_root: Path) -> AsyncIterator[InProcessClient]:
    async with open_client(demo_root) as c:
        yield c
