"""`factory doctor` on real repositories: the test command on main in a real sandbox
(bubblewrap), each model checked offline, and called for one token with --online (the
scripted OpenAI-compatible server on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, make_repo
from tests.openai_server import Reply, ScriptedServer, provider_error
from tests.test_cli import factory

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

KEY_ENV = "FACTORY_DOCTOR_TEST_KEY"
TESTS = 'test_command = "python3 -m unittest -q"\n'


def project(tmp_path: Path, config: str = "") -> Path:
    """The calc project with a configuration, and the replay trajectory its default models
    play (so that only what a test changes can fail)."""
    repo = make_repo(tmp_path / "repo")
    (repo / ".factory.toml").write_text(config or f"[repo]\n{TESTS}")
    trajectory = repo / ".factory" / "replay" / "demo.json"
    trajectory.parent.mkdir(parents=True)
    trajectory.write_text(json.dumps({"format": "factory-replay/1", "agents": {}}))
    return repo


def doctor(repo: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = factory("doctor", "--json", *args, cwd=repo)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", KEY_ENV):
        monkeypatch.delenv(name, raising=False)


def test_the_test_command_runs_on_main_in_the_sandbox(tmp_path: Path) -> None:
    repo = project(tmp_path)
    # What is not on main is not what lands on it: neither an uncommitted change nor a
    # branch checked out counts.
    git(repo, "checkout", "-q", "-b", "elsewhere")
    (repo / "calc" / "ops.py").write_text("def add(a, b):\n    return 0\n")
    git(repo, "commit", "-q", "-am", "break add, elsewhere")
    (repo / "calc" / "ops.py").write_text("this is not python\n")
    code, report = doctor(repo)
    assert code == 0, report
    main = git(repo, "rev-parse", "main").strip()
    assert report["tests"] == {"command": "python3 -m unittest -q", "commit": main,
                               "backend": "bwrap", "passed": True, "reason": "",
                               "output": report["tests"]["output"], "failing": []}
    assert "Ran 2 tests" in report["tests"]["output"] and report["ok"] is True
    assert [m["ok"] for m in report["models"]] == [True]
    # It leaves nothing behind: no worktree, no store.
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not (repo / ".factory" / "factory.db").exists()
    assert list((repo / ".factory" / "landing").iterdir()) == []


def test_failing_tests_on_main_are_named(tmp_path: Path) -> None:
    repo = project(tmp_path)
    (repo / "calc" / "ops.py").write_text("def add(a, b):\n    return a + b\n\n\n"
                                          "def sub(a, b):\n    return a + b\n")
    git(repo, "commit", "-q", "-am", "break sub")
    code, report = doctor(repo)
    assert code == 1 and report["ok"] is False
    assert report["tests"]["failing"] == ["tests.test_ops.OpsTest.test_sub"]
    assert report["tests"]["reason"].startswith("tests failed (exit code 1)")
    shown = factory("doctor", cwd=repo)
    assert shown.returncode == 1
    assert "in the bwrap sandbox: tests failed (exit code 1): tests.test_ops.OpsTest.test_sub" \
        in shown.stdout.replace("\n", "")


def test_a_command_the_sandbox_lacks_is_said_to_be_missing(tmp_path: Path) -> None:
    repo = project(tmp_path, '[repo]\ntest_command = "no-such-runner -q"\n')
    code, report = doctor(repo)
    assert code == 1 and report["tests"]["passed"] is False
    reason = report["tests"]["reason"]
    assert "(exit code 127)" in reason and "no-such-runner: not found" in reason
    assert "the command 'no-such-runner -q', or the interpreter it starts, is not present " \
        "in the sandbox" in reason


def test_a_model_without_its_key_is_found_offline(tmp_path: Path, no_keys: None) -> None:
    repo = project(tmp_path, f'[models]\nplanner = "openai/gpt-4o-mini"\n\n[repo]\n{TESTS}')
    code, report = doctor(repo)
    assert code == 1 and report["tests"]["passed"] is True
    planner, replayed = report["models"]
    assert planner["keys"] == ["models.planner"] and planner["answered"] is None
    assert planner["problems"] == ["OPENAI_API_KEY is not set; export it, or set [models] "
                                   "api_key_env to the variable that holds the key"]
    assert replayed["model"] == "replay/demo" and replayed["ok"] is True


def test_online_calls_each_model_once_for_one_token(
        tmp_path: Path, server: ScriptedServer, no_keys: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    repo = project(tmp_path, f"""\
[models]
planner = "openai/test-model"
implementer = "openai/test-model"
reviewer = "openai/other-model"
api_base = "{server.api_base}"
api_key_env = "{KEY_ENV}"

[repo]
{TESTS}""")
    monkeypatch.setenv(KEY_ENV, "test-key")
    code, report = doctor(repo)
    assert code == 0 and server.requests == []  # offline unless asked
    assert [(m["model"], m["problems"], m["answered"]) for m in report["models"]] == [
        ("openai/test-model", [], None), ("openai/other-model", [], None)]
    server.script(Reply(content="OK", prompt_tokens=3, completion_tokens=1),
                  provider_error(401, "Incorrect API key provided", type="invalid_request_error",
                                 code="invalid_api_key"))
    code, report = doctor(repo, "--online")
    assert code == 1 and report["ok"] is False
    assert [(r["model"], r["max_tokens"]) for r in server.requests] == [
        ("test-model", 1), ("other-model", 1)]
    first, second = report["models"]
    assert first["keys"] == ["models.planner", "models.implementer"]
    assert first["answered"] is True and first["ok"] is True
    assert second["answered"] is False and second["ok"] is False
    assert second["said"].startswith("authentication failed for openai/other-model (401): "
                                     "Incorrect API key provided")
    assert second["said"].endswith(f"check the key in ${KEY_ENV}")


def test_without_a_repository_only_the_backends(tmp_path: Path) -> None:
    done = factory("doctor", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bwrap" in done.stdout and "trust boundary" in done.stdout
    assert "models and the test command were not checked" in done.stdout.replace("\n", " ")
    missing = factory("doctor", "--root", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 2 and "no configuration file here" in missing.stderr
