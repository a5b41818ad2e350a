"""`factory demo`: a small real project, three specs and a recorded trajectory, run for real.

The project is a tiny text-utilities package with its own unittest suite, a gate of its own
(gates/no_todo.py) and a policy of its own (policies/textkit.rego). The trajectory is written
so that the run shows what a factory meets in practice: several agents at once, an agent
that asks the supervisor a question, and the merge queue at work: entries tested together in
batches, each on top of the ones ahead (a speculative chain), a batch that fails and whose
culprit is found by testing it alone, a flaky test re-run instead of blamed, and every gate
of the queue finding something:

- boundaries: stats/sentences writes CHANGELOG.md, inside the spec's Boundaries but outside
  its task's paths (a warning; it lands);
- overlap: stats/counter adds its changelog line where stats/sentences added one; git's
  union driver (.gitattributes) merges them, the gate refuses; revised with main merged in;
- policy: cli/main pastes a line with an AWS key into a test (denied; revised), and the
  project's policy warns on library changes without a test (stats/fast-count);
- dependencies: stats/unicode-words imports a package the project never declared; its
  agent cannot do without it within its task: rejected;
- races: stats/counter's test feeds its counter from as many threads as the run's seed says;
  the race gate's runs lose words (denied; the revision adds a lock);
- todo (the project's own gate): cli/main left a TODO (denied; revised);
- review: two reviewers; the slug task that lost the conflict with its sibling (back with
  main merged in, it resolves it) is sent back once by the second reviewer;
- and the tests: stats/fast-count breaks an existing test (back to its agent, which fixes
  it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from agents.errors import FactoryError

MARKER = ".factory-demo"
TEST_COMMAND = f"{sys.executable} -m unittest discover -s tests -q"

# The project's own gate: it reads the changed files of the merged tree (the queue names them
# in FACTORY_CHANGED) and answers in JSON (agents/gates/command.py has the protocol).
NO_TODO = """\
#!/usr/bin/env python3
\"\"\"No TODO left in a changed Python file: say what is missing in the task instead.\"\"\"
import json
import os
import pathlib

findings = []
for rel in os.environ.get("FACTORY_CHANGED", "").splitlines():
    path = pathlib.Path(rel)
    if path.suffix == ".py" and path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "TODO" in line:
                findings.append({"file": rel, "line": n, "rule": "todo.left",
                                 "message": "a TODO left in: " + line.strip()[:80]})
print(json.dumps({"verdict": "deny" if findings else "pass", "findings": findings}))
"""
# The project's own policy: a warning, never a refusal (Rego, OPA v1; the input document is
# agents/gates/facts.py's).
TEXTKIT_POLICY = """\
# Library code should come with a test: shown on the entry, it still lands.
package factory.textkit

warn contains {
	"rule": "textkit.untested",
	"message": sprintf("changes %s and adds no test", [f.path]),
	"file": f.path,
} if {
	some f in input.files
	startswith(f.path, "textkit/")
	not f.test
	count(input.tests.added) == 0
}
"""

FILES: dict[str, str] = {
    "pyproject.toml": """\
[project]
name = "textkit"
version = "0.1.0"
description = "Small text utilities (the Factory demo project)"
requires-python = ">=3.11"
dependencies = []
""",
    "textkit/__init__.py": '"""Small text utilities."""\n',
    "textkit/slug.py": '''\
"""URL slugs."""

import re


def slugify(text: str) -> str:
    """Lower-case words joined by hyphens."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)
''',
    "textkit/stats.py": '''\
"""Counting things in text."""


def word_count(text: str) -> int:
    """Words are runs of characters between whitespace."""
    return len(text.split())


def char_count(text: str, ignore_spaces: bool = False) -> int:
    return len(text.replace(" ", "")) if ignore_spaces else len(text)
''',
    "tests/__init__.py": "",
    # A test written to be flaky, so the demo shows the queue re-running it: it fails on the
    # first run of any tree the queue tests with cli/main's entry in it (the queue names a
    # run's attempt and entries in FACTORY_TEST_ATTEMPT and FACTORY_TEST_ENTRIES).
    "tests/test_flaky.py": '''\
import os
import unittest


class FlakyTest(unittest.TestCase):
    def test_service_answers(self) -> None:
        first = os.environ.get("FACTORY_TEST_ATTEMPT") == "1"
        with_cli = "cli/main" in os.environ.get("FACTORY_TEST_ENTRIES", "").split(",")
        self.assertFalse(first and with_cli, "the service timed out (a simulated flake)")
''',
    "tests/test_slug.py": '''\
import unittest

from textkit.slug import slugify


class SlugTest(unittest.TestCase):
    def test_words_joined(self) -> None:
        self.assertEqual(slugify("Hello, World!"), "hello-world")

    def test_empty(self) -> None:
        self.assertEqual(slugify("  "), "")
''',
    "tests/test_stats.py": '''\
import unittest

from textkit.stats import char_count, word_count


class StatsTest(unittest.TestCase):
    def test_word_count(self) -> None:
        self.assertEqual(word_count("one two  three"), 3)

    def test_hyphenated_is_one_word(self) -> None:
        self.assertEqual(word_count("well-known fact"), 2)

    def test_char_count(self) -> None:
        self.assertEqual(char_count("a b"), 3)
        self.assertEqual(char_count("a b", ignore_spaces=True), 2)
''',
    ".gitignore": ".factory/\n__pycache__/\n",
    # git's union driver joins both sides' lines where two branches edit the same place: no
    # conflict for git, but the factory's overlap gate refuses the second.
    ".gitattributes": "CHANGELOG.md merge=union\n",
    "CHANGELOG.md": """\
# Changelog

## Unreleased

## 0.1.0
- slugify, word_count and char_count.
""",
    # The project's own gate ([gates.command] todo): no TODO left in a changed Python file.
    "gates/no_todo.py": NO_TODO,
    # The project's own policy ([gates.policy] folder), next to the default ones.
    "policies/textkit.rego": TEXTKIT_POLICY,
    "specs/stats.md": """\
+++
id = "stats"
title = "Sentence and word statistics"
priority = 2
+++

## Goal
Add sentence counting to `textkit.stats`, make word counting Unicode-aware, and offer a
word counter that several threads can feed.

## Architecture
Counting lives in `textkit/stats.py`, the shared counter in `textkit/counter.py`; tests in
`tests/`. New features get a line under "Unreleased" in `CHANGELOG.md`.

## Boundaries
- textkit/stats.py
- textkit/counter.py
- tests/test_stats.py
- tests/test_sentences.py
- tests/test_counter.py
- CHANGELOG.md

## Edge cases
- Empty text has zero sentences.
- Text without a final full stop still counts its last sentence.

## Invariants
- `word_count` keeps counting a hyphenated word as one word.
- A `WordCounter` fed from several threads at once loses no words.
- No new third-party dependency.

## Acceptance
- `python -m unittest discover -s tests -q`
""",
    "specs/slug.md": """\
+++
id = "slug"
title = "Slug options"
priority = 1
+++

## Goal
Let callers limit a slug's length and choose its separator.

## Architecture
`textkit.slug.slugify` gains keyword arguments; tests in `tests/test_slug.py`.

## Boundaries
- textkit/slug.py
- tests/test_slug.py
- tests/test_slug_length.py
- tests/test_slug_separator.py

## Edge cases
- A limit shorter than the first word cuts the word.
- A slug never ends with a separator.

## Invariants
- `slugify(text)` with no options returns exactly what it returns today.

## Acceptance
- `python -m unittest discover -s tests -q`
""",
    "specs/cli.md": """\
+++
id = "cli"
title = "Command line"
priority = 0
+++

## Goal
`python -m textkit slug TEXT` and `python -m textkit count TEXT` print their results.

## Architecture
A `textkit/__main__.py` using argparse; tests in `tests/test_cli.py`.

## Boundaries
- textkit/__main__.py
- tests/test_cli.py

## Edge cases
- An unknown command exits with status 2 and a usage message.

## Invariants
- Importing `textkit` has no side effects.

## Acceptance
- `python -m unittest discover -s tests -q`
""",
}

CONFIG = """\
# The demo's factory configuration (see `factory init` for every key, commented).
[models]
planner = "replay/demo"
implementer = "replay/demo"
reviewer = "replay/demo"

[run]
concurrency = 7
max_steps = 20

[budgets.run]
usd = 5.0

[budgets.agent]
tokens = 200000

[sandbox]
backend = "{backend}"

[repo]
test_command = "{test_command}"

[queue]
# Every gate, cheapest first; "todo" is the project's own (gates/no_todo.py).
gates = ["boundaries", "overlap", "policy", "dependencies", "races", "todo", "review"]

[gates.policy]
folder = "policies"

[gates.races]
runs = 4

[gates.review]
reviewers = 2

[gates.command]
todo = "gates/no_todo.py"
"""


def _turn(tin: int, tout: int, *calls: tuple[str, dict[str, Any]], content: str | None = None,
          latency_ms: int | None = None) -> dict[str, Any]:
    turn: dict[str, Any] = {
        "content": content,
        "tool_calls": [{"name": n, "arguments": a} for n, a in calls],
        "usage": {"prompt_tokens": tin, "completion_tokens": tout},
    }
    if latency_ms is not None:
        turn["latency_ms"] = latency_ms
    return turn


def _plan(*tasks: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        _turn(2100, 120, ("list_files", {"path": "."}), content="Looking at the project."),
        _turn(2600, 420, ("submit_plan", {"tasks": list(tasks)})),
    ]


def _task(id_: str, title: str, paths: list[str], instructions: str,
          depends_on: list[str] | None = None) -> dict[str, Any]:
    return {"id": id_, "title": title, "paths": paths, "instructions": instructions,
            "depends_on": depends_on or [],
            "acceptance": ["python -m unittest discover -s tests -q"]}


def _revise(*edits: tuple[str, dict[str, Any]], summary: str) -> list[dict[str, Any]]:
    """The turns an agent plays when its entry comes back from the queue (none are played
    when it lands the first time): its edits, the tests, finish. No edit: it gives up."""
    turns = [_turn(4200, 140, edit) for edit in edits]
    if edits:
        turns.append(_turn(4600, 60, ("run_tests", {})))
    turns.append(_turn(4800, 90, ("finish", {"summary": summary})))
    return turns


def _work(read: str, *edits: tuple[str, dict[str, Any]], summary: str,
          pad: int = 0, ask: dict[str, Any] | None = None,
          slow_ms: int | None = None) -> list[dict[str, Any]]:
    """An agent's first work; `slow_ms`: its first model call takes that long, whatever
    the trajectory's latency."""
    turns = [_turn(1800, 90, ("list_files", {"path": "."}), latency_ms=slow_ms)]
    if ask is not None:  # on screen it waits in the inbox; headless, the engine answers
        turns.append(_turn(2000, 70, ("ask", ask)))
    turns.append(_turn(2300, 110, ("read_file", {"path": read})))
    looks = ["def ", "import", "return", "class ", "test_"]
    turns += [_turn(2300, 120, ("search_code", {"pattern": looks[i % len(looks)],
                                                "path": "textkit"})) for i in range(pad)]
    turns += [_turn(3100, 520, edit) for edit in edits]
    turns.append(_turn(3600, 60, ("run_tests", {})))
    turns.append(_turn(3900, 80, ("finish", {"summary": summary})))
    return turns


SLUG_MAX = '''\
def slugify(text: str, max_length: int | None = None) -> str:
    """Lower-case words joined by hyphens, cut to max_length without a trailing hyphen."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = "-".join(words)
    if max_length is not None:
        slug = slug[:max_length].rstrip("-")
    return slug
'''
SLUG_SEP = '''\
def slugify(text: str, separator: str = "-") -> str:
    """Lower-case words joined by the separator."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return separator.join(words)
'''
SLUG_BOTH = '''\
"""URL slugs."""

import re


def slugify(text: str, max_length: int | None = None, separator: str = "-") -> str:
    """Lower-case words joined by the separator, cut to max_length without a trailing
    separator."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = separator.join(words)
    if max_length is not None:
        slug = slug[:max_length].rstrip(separator)
    return slug
'''
SLUG_OLD = '''\
def slugify(text: str) -> str:
    """Lower-case words joined by hyphens."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return "-".join(words)
'''
TEST_SLUG_LENGTH = '''\
import unittest

from textkit.slug import slugify


class SlugLengthTest(unittest.TestCase):
    def test_cut_without_trailing_hyphen(self) -> None:
        self.assertEqual(slugify("Hello big world", max_length=10), "hello-big")
'''
TEST_SLUG_SEP = '''\
import unittest

from textkit.slug import slugify


class SlugSeparatorTest(unittest.TestCase):
    def test_underscore(self) -> None:
        self.assertEqual(slugify("Hello World", separator="_"), "hello_world")
'''
SENTENCES = '''

def sentence_count(text: str) -> int:
    """Sentences end with '.', '!' or '?'; a last sentence without one still counts."""
    import re

    parts = [p for p in re.split(r"[.!?]+", text) if p.strip()]
    return len(parts)
'''
TEST_SENTENCES = '''\
import unittest

from textkit.stats import sentence_count


class SentenceTest(unittest.TestCase):
    def test_counts(self) -> None:
        self.assertEqual(sentence_count("One. Two! Three"), 3)

    def test_empty(self) -> None:
        self.assertEqual(sentence_count(""), 0)
'''
UNICODE_WORDS = '''\
"""Counting things in text."""

import regex


def word_count(text: str) -> int:
    """Words are runs of Unicode letters, digits and joining hyphens."""
    return len(regex.findall(r"[\\p{L}\\p{N}]+(?:-[\\p{L}\\p{N}]+)*", text))
'''
FAST_COUNT_OLD = '''    return len(text.split())'''
FAST_COUNT_NEW = '''    # Faster: count separators instead of building a list.
    return sum(1 for ch in text.replace("-", " ").split(" ") if ch)'''
FAST_COUNT_FIXED = '''    # Faster: count the starts of words instead of building a list.
    return sum(1 for i, ch in enumerate(text)
               if not ch.isspace() and (i == 0 or text[i - 1].isspace()))'''
CLI_MAIN = '''\
"""python -m textkit slug TEXT | count TEXT"""

import argparse

from textkit.slug import slugify
from textkit.stats import word_count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="textkit")
    parser.add_argument("command", choices=["slug", "count"])
    parser.add_argument("text")
    args = parser.parse_args(argv)
    print(slugify(args.text) if args.command == "slug" else word_count(args.text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''
TEST_CLI = '''\
import contextlib
import io
import unittest

from textkit.__main__ import main


class CliTest(unittest.TestCase):
    def test_slug(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["slug", "Hi There"]), 0)
        self.assertEqual(out.getvalue().strip(), "hi-there")

    def test_unknown_command(self) -> None:
        with self.assertRaises(SystemExit) as caught, contextlib.redirect_stderr(io.StringIO()):
            main(["shout", "x"])
        self.assertEqual(caught.exception.code, 2)
'''


# AWS's documented example access key: any secret scanner's idea of a key. Written in two
# halves so that this file itself does not carry it.
EXAMPLE_KEY = "AKIA" + "IOSFODNN7EXAMPLE"
CLI_TODO = "    # TODO: a --version option\n"
CLI_MAIN_FIRST = CLI_MAIN.replace('    parser.add_argument("command"',
                                  CLI_TODO + '    parser.add_argument("command"')
CLI_COUNT_KEY = f'"rotated {EXAMPLE_KEY} today"'
CLI_COUNT_PLAIN = '"three plain words"'
TEST_CLI_COUNT = TEST_CLI + f'''
    def test_count(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["count", {CLI_COUNT_KEY}]), 0)
        self.assertEqual(out.getvalue().strip(), "3")
'''

CHANGELOG_HEAD = "## Unreleased\n"
CHANGELOG_SENTENCES = "- `sentence_count(text)` counts sentences.\n"
CHANGELOG_COUNTER = "- `WordCounter`: one word count that several threads feed.\n"
# The race: `self.total += ...` reads the total before it counts, so two threads that count
# at once both add to the same old total, and one's words are lost.
COUNTER_RACY = '''\
"""A word count several threads can feed."""

from textkit.stats import word_count


class WordCounter:
    """The words of every text added, from any thread."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, text: str) -> None:
        self.total += word_count(text)
'''
COUNTER_ADD_RACY = "        self.total += word_count(text)\n"
COUNTER_ADD_LOCKED = '''\
        counted = word_count(text)  # outside the lock: threads count at once
        with self._lock:
            self.total += counted
'''
COUNTER_INIT_RACY = "        self.total = 0\n"
COUNTER_INIT_LOCKED = "        self.total = 0\n        self._lock = threading.Lock()\n"
COUNTER_IMPORT_RACY = "from textkit.stats import word_count\n"
COUNTER_IMPORT_LOCKED = "import threading\n\nfrom textkit.stats import word_count\n"
# A plain run (FACTORY_TEST_SEED unset) feeds it from one thread and passes; each of the race
# gate's runs has its own seed, so its own number of threads, and with two or more the race
# loses words.
TEST_COUNTER = '''\
import os
import threading
import time
import unittest
from unittest import mock

from textkit import counter
from textkit.counter import WordCounter


class WordCounterTest(unittest.TestCase):
    def test_threads_lose_no_words(self) -> None:
        threads = 1 + int(os.environ.get("FACTORY_TEST_SEED", "0")) % 16
        real = counter.word_count

        def slow(text: str) -> int:  # a long text takes a while to count
            time.sleep(0.01)
            return real(text)

        words = WordCounter()
        start = threading.Barrier(threads)

        def feed() -> None:
            start.wait()
            words.add("one two three")

        with mock.patch.object(counter, "word_count", slow):
            workers = [threading.Thread(target=feed) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        self.assertEqual(words.total, 3 * threads)
'''

# Whichever slug task lands second conflicts with the first; back with main merged in, it
# keeps both options. A reviewer then asks the docstring to say what the question's answer
# was; the next revision says it.
SLUG_RESOLVED = _revise(("write_file", {"path": "textkit/slug.py", "content": SLUG_BOTH}),
                        summary="Resolved the conflict with main: slugify takes both "
                        "max_length and separator.")
SLUG_DOC_OLD = "    separator.\"\"\"\n"
SLUG_DOC_NEW = "    separator. max_length counts the whole slug, separators included.\"\"\"\n"
SLUG_REVIEWED = _revise(("edit_file", {"path": "textkit/slug.py", "search": SLUG_DOC_OLD,
                                       "replace": SLUG_DOC_NEW}),
                        summary="The docstring says that max_length counts separators too.")
SLUG_REVIEW_COMMENT = {"file": "textkit/slug.py", "line": 7,
                       "message": "say in the docstring whether max_length counts the "
                       "separators (the supervisor answered: the whole slug)"}

REVIEWER_LATENCY_MS = 120
# stats/counter's first model call: long enough that stats/sentences lands first (with
# about 6 s to spare on a loaded 2-core machine; 4 s was seen to be too little).
COUNTER_SLOW_MS = 10000


def _reviews(tasks: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The two reviewers of every task, for its first review and each revision's: the first
    reads a file and approves, the second approves; except on the slug task that lost the
    conflict, whose resolution the second reviewer sends back once."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key in tasks:
        for suffix in ("", "@1", "@2"):
            out[f"review:{key}/1{suffix}"] = [
                _turn(2600, 60, ("list_files", {"path": "."}), latency_ms=REVIEWER_LATENCY_MS),
                _turn(3100, 90, ("submit_review", {"vote": "approve"}),
                      latency_ms=REVIEWER_LATENCY_MS)]
            out[f"review:{key}/2{suffix}"] = [
                _turn(3000, 80, ("submit_review", {"vote": "approve"}),
                      latency_ms=REVIEWER_LATENCY_MS)]
    for key in ("slug/max-length", "slug/separator"):  # only the conflict's loser has a @1
        out[f"review:{key}/2@1"] = [_turn(3300, 140, ("submit_review", {
            "vote": "request_changes", "comments": [SLUG_REVIEW_COMMENT]}),
            latency_ms=REVIEWER_LATENCY_MS)]
    return out


def trajectory() -> dict[str, Any]:
    agents: dict[str, list[dict[str, Any]]] = {
        "plan:stats": _plan(
            _task("sentences", "Add sentence_count", ["textkit/stats.py",
                  "tests/test_sentences.py"], "Add sentence_count(text) with tests."),
            _task("unicode-words", "Unicode-aware word_count", ["textkit/stats.py"],
                  "Count words made of any Unicode letters."),
            _task("fast-count", "Faster word_count", ["textkit/stats.py"],
                  "Make word_count faster without changing results."),
            _task("counter", "A WordCounter threads share", ["textkit/counter.py",
                  "tests/test_counter.py", "CHANGELOG.md"],
                  "Add textkit.counter.WordCounter, fed from several threads, with a "
                  "changelog line."),
        ),
        "plan:slug": _plan(
            _task("max-length", "slugify(max_length=...)", ["textkit/slug.py",
                  "tests/test_slug_length.py"], "Add an optional max_length."),
            _task("separator", "slugify(separator=...)", ["textkit/slug.py",
                  "tests/test_slug_separator.py"], "Add an optional separator."),
        ),
        "plan:cli": _plan(
            _task("main", "python -m textkit", ["textkit/__main__.py", "tests/test_cli.py"],
                  "Add the argparse entry point and its tests."),
        ),
        # It writes a changelog line too: inside the spec's Boundaries, outside its task's
        # paths (the boundaries gate shows it).
        "stats/sentences": _work(
            "textkit/stats.py",
            ("edit_file", {"path": "textkit/stats.py",
                           "search": "    return len(text.replace(\" \", \"\")) if ignore_spaces "
                           "else len(text)\n",
                           "replace": "    return len(text.replace(\" \", \"\")) if ignore_spaces "
                           "else len(text)\n" + SENTENCES}),
            ("write_file", {"path": "tests/test_sentences.py", "content": TEST_SENTENCES}),
            ("edit_file", {"path": "CHANGELOG.md", "search": CHANGELOG_HEAD,
                           "replace": CHANGELOG_HEAD + CHANGELOG_SENTENCES}),
            summary="Added sentence_count with tests for empty text and a missing final stop.",
        ),
        "stats/unicode-words": _work(
            "textkit/stats.py",
            ("write_file", {"path": "textkit/stats.py",
                            "content": UNICODE_WORDS + FILES["textkit/stats.py"].split(
                                "return len(text.split())\n", 1)[1]}),
            summary="word_count now uses the regex module's Unicode classes.",
        ) + _revise(summary="Unicode classes need the regex package, and this task may not "
                    "add a dependency (the spec forbids one): leaving it to a person."),
        "stats/fast-count": _work(
            "textkit/stats.py",
            ("edit_file", {"path": "textkit/stats.py", "search": FAST_COUNT_OLD,
                           "replace": FAST_COUNT_NEW}),
            summary="word_count avoids building a list.", pad=3,
        ) + _revise(("edit_file", {"path": "textkit/stats.py", "search": FAST_COUNT_NEW,
                                   "replace": FAST_COUNT_FIXED}),
                    summary="word_count counts word starts: hyphenated words stay one word."),
        # The slowest agent (one long model call): by the time it is done, stats/sentences
        # landed its changelog line where this one adds its own. git's union driver merges
        # them; the overlap gate sends it back; with main merged in, it puts its line after
        # the other (were sentences still on its way, its line would go, and it would still
        # land). Then the race gate finds its race; the next revision adds a lock.
        "stats/counter": _work(
            "textkit/stats.py",
            ("write_file", {"path": "textkit/counter.py", "content": COUNTER_RACY}),
            ("write_file", {"path": "tests/test_counter.py", "content": TEST_COUNTER}),
            ("edit_file", {"path": "CHANGELOG.md", "search": CHANGELOG_HEAD,
                           "replace": CHANGELOG_HEAD + CHANGELOG_COUNTER}),
            summary="Added WordCounter with a test that feeds it from threads.", pad=2,
            slow_ms=COUNTER_SLOW_MS,
        ) + _revise(("edit_file", {"path": "CHANGELOG.md", "search": CHANGELOG_COUNTER,
                                   "replace": ""}),
                    ("edit_file", {"path": "CHANGELOG.md",
                                   "search": CHANGELOG_HEAD + CHANGELOG_SENTENCES,
                                   "replace": CHANGELOG_HEAD + CHANGELOG_SENTENCES
                                   + CHANGELOG_COUNTER}),
                    summary="With main merged in, my changelog line follows sentence_count's.")
        + _revise(("edit_file", {"path": "textkit/counter.py", "search": COUNTER_IMPORT_RACY,
                                 "replace": COUNTER_IMPORT_LOCKED}),
                  ("edit_file", {"path": "textkit/counter.py", "search": COUNTER_INIT_RACY,
                                 "replace": COUNTER_INIT_LOCKED}),
                  ("edit_file", {"path": "textkit/counter.py", "search": COUNTER_ADD_RACY,
                                 "replace": COUNTER_ADD_LOCKED}),
                  summary="add() counts outside a lock and adds under it: no word is lost."),
        "slug/max-length": _work(
            "textkit/slug.py",
            ("edit_file", {"path": "textkit/slug.py", "search": SLUG_OLD, "replace": SLUG_MAX}),
            ("write_file", {"path": "tests/test_slug_length.py", "content": TEST_SLUG_LENGTH}),
            summary="slugify takes max_length and never ends with a hyphen. Assumed: "
            "max_length counts the whole slug, separators included.",
            ask={"question": "Should max_length count the whole slug, hyphens included, or "
                 "only its letters and digits?",
                 "options": ["the whole slug", "letters and digits only"]},
        ) + SLUG_RESOLVED + SLUG_REVIEWED,
        "slug/separator": _work(
            "textkit/slug.py",
            ("edit_file", {"path": "textkit/slug.py", "search": SLUG_OLD, "replace": SLUG_SEP}),
            ("write_file", {"path": "tests/test_slug_separator.py", "content": TEST_SLUG_SEP}),
            summary="slugify takes a separator.", pad=4,
        ) + SLUG_RESOLVED + SLUG_REVIEWED,
        # Its first version pastes a line with an AWS key into a test (the policy gate's
        # secrets rule refuses it) and leaves a TODO (the project's todo gate, which the
        # queue reaches once the policy passes): two revisions.
        "cli/main": _work(
            "textkit/stats.py",
            ("write_file", {"path": "textkit/__main__.py", "content": CLI_MAIN_FIRST}),
            ("write_file", {"path": "tests/test_cli.py", "content": TEST_CLI_COUNT}),
            summary="Added python -m textkit with slug and count commands.", pad=1,
        ) + _revise(("edit_file", {"path": "tests/test_cli.py", "search": CLI_COUNT_KEY,
                                   "replace": CLI_COUNT_PLAIN}),
                    summary="The count test uses plain words, not a line with a key in it.")
        + _revise(("edit_file", {"path": "textkit/__main__.py", "search": CLI_TODO,
                                 "replace": ""}),
                  summary="Dropped the TODO: --version is not in the spec."),
    }
    agents.update(_reviews([k for k in agents if not k.startswith("plan:")]))
    return {"format": "factory-replay/1", "priced_as": "gpt-4o-mini", "latency_ms": 350,
            "agents": agents}


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Factory demo", "-c", "user.email=demo@localhost", *args],
        cwd=root, check=True, capture_output=True,
    )


# Who commits in a demo folder: the demo itself (its first commit) and the engine (every
# other). A commit by anyone else is a person's work there.
DEMO_EMAILS = ("demo@localhost", "factory@localhost")


def changes(path: Path) -> list[str]:
    """What in an earlier demo folder neither the demo nor its run wrote: uncommitted
    changes and files (git's ignore rules apply: `.factory/` is the run's), and commits
    on any ref by someone else. Empty: recreating the folder loses nothing of a person's."""
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=path,
                              capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    if not (path / ".git").exists():
        return ["its git repository (.git) is gone, so what changed cannot be told"]
    status = git("status", "--porcelain", "--untracked-files=all")
    log = git("log", "--all", "--format=%h%x00%ae%x00%ce%x00%s")
    if status is None or log is None:
        return ["git cannot read its repository, so what changed cannot be told"]
    found = [f"{'untracked' if line[:2] == '??' else 'changed'}: {line[3:]}"
             for line in status.splitlines() if line.strip()]
    for line in log.splitlines():
        sha, author, committer, subject = [*line.split("\0"), "", "", ""][:4]
        if author not in DEMO_EMAILS or committer not in DEMO_EMAILS:
            found.append(f"commit {sha} by {author}: {subject}")
    return found


def build(path: Path, backend: str, fresh: bool = False) -> Path:
    """Create the demo repository at path; an earlier demo there is recreated, unless a
    person changed it (`changes`) and `fresh` was not given: it is theirs now."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise FactoryError(f"{path}: exists and is not a Factory demo; choose another PATH")
        found = [] if fresh else changes(path)
        if found:
            shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more"
                                            if len(found) > 5 else "")
            raise FactoryError(
                f"{path}: the demo folder was changed since `factory demo` wrote it "
                f"({shown}); not overwriting it. To start afresh, deleting it: `factory "
                f"demo --fresh {path}` (or `make demo DEMO_ARGS=--fresh`), or delete the "
                "folder; or build the demo elsewhere: `factory demo OTHER_PATH`")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in FILES.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (path / ".factory.toml").write_text(
        CONFIG.format(backend=backend, test_command=TEST_COMMAND.replace("\\", "\\\\"))
    )
    replay_dir = path / ".factory" / "replay"
    replay_dir.mkdir(parents=True)
    (replay_dir / "demo.json").write_text(json.dumps(trajectory(), indent=1))
    (path / MARKER).write_text("created by `factory demo`; safe to delete\n")
    _git(path, "init", "-q", "-b", "main")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "textkit: initial project")
    return path
