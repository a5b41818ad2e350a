"""The policy gate on real git repositories: main's policies judge a branch's facts.

Each test makes a repository in tmp_path (main, then a branch commit), builds the GateInput
the queue would, and checks the gate's verdict and findings. Gates are shared across tests
by configuration: a policy set compiles once per version of its folder, as in a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from agents.config import FactoryConfig
from agents.gates.base import GateVerdict, Verdict
from agents.gates.policy import PolicyGate, default_sources, validate_sync
from tests.conftest import make_repo
from tests.gates.test_facts import TEST_BASE, gate_input

FACTORY = Path(sys.executable).parent / "factory"
_GATES: dict[tuple[str, str], PolicyGate] = {}

USER_POLICY = '''package factory.mine

# No change may touch the payments module.
deny contains {"rule": "mine.payments", "message": "payments are frozen", "file": f.path} if {
	some f in input.files
	startswith(f.path, "payments/")
}
'''
LOOSER = USER_POLICY.replace('startswith(f.path, "payments/")', 'f.path == "nothing"')
OTHER_POLICY = '''package factory.other

warn contains {"rule": "other.todo", "message": "adds a TODO file"} if {
	some f in input.files
	f.path == "TODO"
}
'''
MALFORMED = 'package factory.broken\n\ndeny contains f if {\n\tf := {"rule": "x"\n}\n'


def gate(folder: str = "", approval: str = "never") -> PolicyGate:
    key = (folder, approval)
    if key not in _GATES:
        config = FactoryConfig.model_validate(
            {"gates": {"policy": {"folder": folder}}, "queue": {"approval": approval}})
        _GATES[key] = PolicyGate(SimpleNamespace(config=config))
    return _GATES[key]


async def judged(tmp_path: Path, base: dict[str, str], change: dict[str, str | None],
                 folder: str = "", approval: str = "never",
                 approved: bool = False) -> GateVerdict:
    given = await gate_input(tmp_path / "repo", base, change)
    given.approved = approved
    return await gate(folder, approval).check(given)


def rules(verdict: GateVerdict) -> set[str]:
    return {f.rule for f in verdict.findings}


# -- secrets ----------------------------------------------------------------------------------


async def test_an_aws_key_added_is_denied(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"app.py": "x = 1\n"},
                     {"app.py": "x = 1\nAWS = 'AKIA" + "ABCDEFGHIJKLMNOP'\n"})
    assert v.verdict == Verdict.DENY
    found = next(f for f in v.findings if f.rule == "secrets.added")
    assert (found.file, found.line) == ("app.py", 2) and "AWS Access Key" in found.message


async def test_a_private_key_added_is_denied_even_in_a_test_fixture(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"app.py": "x = 1\n"},
                     {"tests/fixtures/key.pem": "-----BEGIN RSA " "PRIVATE KEY-----\nMII\n"})
    assert v.verdict == Verdict.DENY and "secrets.added" in rules(v)


async def test_a_harmless_string_passes(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"app.py": "x = 1\n"},
                     {"app.py": "x = 1\nGREETING = 'hello, world'\n"})
    assert v.verdict == Verdict.PASS, v.summary
    assert "risk low" in v.summary


async def test_an_allowlisted_secret_asks_a_person_instead(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"app.py": "x = 1\n"},
                     {"app.py": "K = 'AKIA" + "ABCDEFGHIJKLMNOP'  # pragma: allowlist secret\n"})
    assert v.verdict == Verdict.APPROVE and "secrets.allowlisted" in rules(v)


# -- tests weakened ---------------------------------------------------------------------------


async def test_an_assertion_removed_needs_approval(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"tests/test_m.py": TEST_BASE},
                     {"tests/test_m.py": TEST_BASE.replace("    assert 2 + 2 == 4\n", "")})
    assert v.verdict == Verdict.APPROVE
    found = next(f for f in v.findings if f.rule == "tests.assertions_removed")
    assert (found.file, found.line) == ("tests/test_m.py", 5)
    assert "test_add: 1 assertions, was 2" in found.message


async def test_a_skip_added_needs_approval(tmp_path: Path) -> None:
    skipped = TEST_BASE.replace("    def test_equal",
                                "    @unittest.skip('later')\n    def test_equal")
    v = await judged(tmp_path, {"tests/test_m.py": TEST_BASE}, {"tests/test_m.py": skipped})
    assert v.verdict == Verdict.APPROVE and "tests.skip_added" in rules(v)


async def test_an_xfail_added_needs_approval(tmp_path: Path) -> None:
    xfailed = TEST_BASE.replace("def test_other", "@pytest.mark.xfail\ndef test_other")
    v = await judged(tmp_path, {"tests/test_m.py": TEST_BASE}, {"tests/test_m.py": xfailed})
    assert v.verdict == Verdict.APPROVE
    assert any("adds mark.xfail" in f.message for f in v.findings)


async def test_a_deleted_test_needs_approval(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"tests/test_m.py": TEST_BASE},
                     {"tests/test_m.py": TEST_BASE.split("\n\ndef test_other")[0] + "\n"})
    assert v.verdict == Verdict.APPROVE and "tests.deleted" in rules(v)


async def test_new_tests_alone_are_low_risk(tmp_path: Path) -> None:
    many = {f"tests/test_{i}.py": "".join(f"def test_{j}():\n    assert {j}\n\n\n"
                                          for j in range(40)) for i in range(8)}
    v = await judged(tmp_path, {"tests/test_m.py": TEST_BASE}, many, approval="medium")
    assert v.verdict == Verdict.PASS, v.summary
    assert "risk low" in v.summary


# -- build and CI files, risk -----------------------------------------------------------------


async def test_tox_ini_needs_approval(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"tox.ini": "[tox]\nenvlist = py311\n"},
                     {"tox.ini": "[tox]\nenvlist = py312\n"})
    assert v.verdict == Verdict.APPROVE
    found = next(f for f in v.findings if f.rule == "build.touched")
    assert found.file == "tox.ini"


async def test_a_workflow_needs_approval_and_plain_code_does_not(tmp_path: Path) -> None:
    v = await judged(tmp_path, {"app.py": "x = 1\n"},
                     {".github/workflows/ci.yml": "on: push\n"})
    assert v.verdict == Verdict.APPROVE and "build.touched" in rules(v)
    plain = await judged(tmp_path / "2", {"app.py": "x = 1\n"}, {"app.py": "x = 2\n"})
    assert plain.verdict == Verdict.PASS


async def test_high_risk_asks_only_when_approval_says_so(tmp_path: Path) -> None:
    big = {"app.py": "".join(f"v{i} = {i}\n" for i in range(450))}
    asks = await judged(tmp_path / "a", {"app.py": "x = 1\n"}, big, approval="high")
    assert asks.verdict == Verdict.APPROVE
    assert any(f.rule == "policy.risk" and f.message.startswith("high risk: ")
               for f in asks.findings)
    shown = await judged(tmp_path / "b", {"app.py": "x = 1\n"}, big, approval="never")
    assert shown.verdict == Verdict.WARN and "high risk: " in shown.summary
    approved = await judged(tmp_path / "c", {"app.py": "x = 1\n"}, big, approval="high",
                            approved=True)
    assert approved.verdict == Verdict.WARN


async def test_an_added_dependency_is_high_risk(tmp_path: Path) -> None:
    before = '[project]\nname = "p"\ndependencies = []\n'
    v = await judged(tmp_path, {"pyproject.toml": before},
                     {"pyproject.toml": before.replace("[]", '["requests"]')}, approval="high")
    assert v.verdict == Verdict.APPROVE
    assert any("adds the dependency requests" in f.message for f in v.findings)


# -- the user's policies, from main -----------------------------------------------------------


async def test_a_user_policy_from_the_folder(tmp_path: Path) -> None:
    base = {"policies/mine.rego": USER_POLICY, "payments/pay.py": "x = 1\n"}
    v = await judged(tmp_path, base, {"payments/pay.py": "x = 2\n"}, folder="policies")
    assert v.verdict == Verdict.DENY
    assert {(f.rule, f.file) for f in v.findings if f.verdict == Verdict.DENY} == {
        ("mine.payments", "payments/pay.py")}
    elsewhere = await judged(tmp_path / "2", {**base, "app.py": "x = 1\n"},
                             {"app.py": "x = 2\n"}, folder="policies")
    assert elsewhere.verdict == Verdict.PASS


@pytest.mark.parametrize("edit", [None, LOOSER], ids=["deletes", "loosens"])
async def test_a_branch_cannot_change_its_own_policy(tmp_path: Path, edit: str | None) -> None:
    base = {"policies/mine.rego": USER_POLICY, "payments/pay.py": "x = 1\n"}
    v = await judged(tmp_path, base, {"policies/mine.rego": edit, "payments/pay.py": "x = 2\n"},
                     folder="policies")
    assert v.verdict == Verdict.DENY and "mine.payments" in rules(v)


async def test_a_malformed_policy_is_named_and_the_others_still_run(tmp_path: Path) -> None:
    base = {"policies/broken.rego": MALFORMED, "policies/mine.rego": USER_POLICY,
            "policies/other.rego": OTHER_POLICY, "payments/pay.py": "x = 1\n"}
    v = await judged(tmp_path, base, {"payments/pay.py": "x = 2\n", "TODO": "later\n",
                                      "app.py": "K = 'AKIA" + "ABCDEFGHIJKLMNOP'\n"},
                     folder="policies")
    malformed = [f for f in v.findings if f.rule == "policy.malformed"]
    assert [(f.file, f.line, f.verdict) for f in malformed] == [
        ("policies/broken.rego", 3, Verdict.APPROVE)]
    assert "unclosed" in malformed[0].message
    assert {"mine.payments", "other.todo", "secrets.added"} <= rules(v)
    assert v.verdict == Verdict.DENY


async def test_a_policy_that_would_crash_the_engine_is_refused(tmp_path: Path) -> None:
    crash = 'package factory.crash\n\nwarn contains "x" if {\n\tcount(data.factory.deny) == 0 ' \
        'with input as {"secrets": []}\n}\n'
    v = await judged(tmp_path, {"policies/crash.rego": crash, "app.py": "x = 1\n"},
                     {"app.py": "x = 2\n"}, folder="policies")
    assert [(f.rule, f.file, f.line) for f in v.findings] == [
        ("policy.malformed", "policies/crash.rego", 4)]
    assert v.verdict == Verdict.APPROVE


def test_the_default_policies_rego_tests_pass() -> None:
    report = validate_sync(default_sources(), tests=True)
    assert report.problems == []
    assert len(report.tests) >= 16
    assert [t for t in report.tests if not t[3]] == []


# -- factory policy check ---------------------------------------------------------------------


def policy_check(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1"}
    return subprocess.run([str(FACTORY), "policy", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_policy_check_on_a_good_folder(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {".factory.toml": '[gates.policy]\nfolder = "pol"\n',
                                         "pol/mine.rego": USER_POLICY})
    done = policy_check(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problems" in done.stdout


def test_policy_check_on_a_bad_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.rego").write_text(MALFORMED)
    (folder / "mine.rego").write_text(USER_POLICY)
    (folder / "mine_test.rego").write_text(
        'package factory.mine_test\n\ntest_fires if {\n\tcount(data.factory.deny) == 1 '
        'with input.files as [{"path": "elsewhere/x.py"}]\n}\n')
    done = policy_check(tmp_path, str(folder))
    assert done.returncode == 1
    assert f"{folder}/broken.rego:3: this is unclosed" in done.stdout
    assert f"{folder}/mine_test.rego:3: test_fires failed" in done.stdout


# -- speed ------------------------------------------------------------------------------------


