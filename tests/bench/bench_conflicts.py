"""Conflict view benchmark: 200 open branches over a repository of 1,000 files.

Each branch changes three files; some files are popular, so a few branches overlap and some
of those conflict. In one run it times, as medians of several rounds:
- the full conflict view the console shows (`ConflictForecaster.refresh` over every open
  branch, from a cold cache), counting the pairs it merges;
- the baseline: `git merge-tree` on every pair of branches, in one `--stdin` process, as a
  forecast that does not look at paths would have to.
Goal: the full view under 2 s; pairs with disjoint paths never merged.
Usage: python tests/bench/bench_conflicts.py [--branches N] [--files N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents import events as ev
from agents.conflicts import BranchInfo, ConflictForecaster, overlapping_pairs
from agents.gitcmd import GIT_ENV


def git(root: Path, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True,
                          input=stdin, env={**os.environ, **GIT_ENV}).stdout


def build(root: Path, files: int, branches: int, seed: int) -> dict[str, BranchInfo]:
    """A repository and its branches, made with git's plumbing (fast: no checkouts)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        folder = root / f"src/pkg{i // 50}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text("".join(f"line {k} of {i}\n" for k in range(20)))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a thousand files")
    paths = git(root, "ls-files").split()
    popular = paths[:20]  # a few files many branches touch
    out: dict[str, BranchInfo] = {}
    base_tree = git(root, "rev-parse", "main^{tree}").strip()
    main = git(root, "rev-parse", "main").strip()
    index = root / ".git" / "bench-index"
    for b in range(branches):
        chosen = rng.sample(paths, 2) + ([rng.choice(popular)] if rng.random() < 0.3 else
                                         rng.sample(paths, 1))
        env = {**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(index)}
        subprocess.run(["git", "read-tree", base_tree], cwd=root, check=True, env=env)
        for path in chosen:
            text = (root / path).read_text().splitlines(keepends=True)
            text[rng.randrange(len(text))] = f"changed by branch {b}\n"
            blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=root,
                                  input="".join(text), text=True, capture_output=True,
                                  check=True, env=env).stdout.strip()
            subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{blob},{path}"],
                           cwd=root, check=True, env=env)
        tree = subprocess.run(["git", "write-tree"], cwd=root, capture_output=True, text=True,
                              check=True, env=env).stdout.strip()
        commit = git(root, "commit-tree", tree, "-p", main, "-m", f"branch {b}").strip()
        name = f"factory/bench/b{b:03d}"
        git(root, "update-ref", f"refs/heads/{name}", commit)
        out[name] = BranchInfo(name, commit, sorted(set(chosen)))
    return out


async def forecast(root: Path, branches: dict[str, BranchInfo], scratch: Path) \
        -> tuple[float, int, int, int]:
    """Seconds for a cold full refresh; pairs merged; conflicts found; merge-tree processes."""
    async def emit(_: ev.Event) -> None:
        return None

    forecaster = ConflictForecaster(root, emit, scratch)
    started = time.perf_counter()
    checked = await forecaster.refresh(branches)
    return (time.perf_counter() - started, len(checked), sum(c.conflicts for c in checked),
            forecaster.runs)


def every_pair(root: Path, branches: dict[str, BranchInfo]) -> tuple[float, int]:
    """Seconds for git merge-tree on every pair, in one --stdin process (objects written
    to a throw-away directory, as the forecaster does)."""
    lines = "".join(f"{a.head} {b.head}\n"
                    for a, b in itertools.combinations(branches.values(), 2))
    scratch = Path(tempfile.mkdtemp(prefix="bench-conflicts-objects-"))
    env = {**os.environ, **GIT_ENV, "GIT_OBJECT_DIRECTORY": str(scratch),
           "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(root / ".git" / "objects")}
    started = time.perf_counter()
    subprocess.run(["git", "merge-tree", "--write-tree", "-z", "--name-only", "--no-messages",
                    "--stdin"], cwd=root, input=lines.encode(), capture_output=True, env=env,
                   check=False)
    return time.perf_counter() - started, lines.count("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--branches", type=int, default=200)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-conflicts-"))
    root = work / "repo"
    branches = build(root, args.files, args.branches, args.seed)
    overlapping = len(overlapping_pairs({n: b.files for n, b in branches.items()}))
    ours, baseline = [], []
    for r in range(args.rounds):
        seconds, merged, conflicts, processes = asyncio.run(
            forecast(root, branches, work / f"scratch{r}"))
        ours.append(seconds)
        all_seconds, all_pairs = every_pair(root, branches)
        baseline.append(all_seconds)
    view, base = statistics.median(ours), statistics.median(baseline)
    print(f"conflicts: {args.branches} branches over {args.files} files, seed {args.seed}, "
          f"{args.rounds} rounds, medians")
    print(f"  full conflict view (cold)    {view:8.3f} s   {merged} pairs merged "
          f"({overlapping} overlap), {conflicts} conflict, {processes} merge-tree "
          f"process(es)   (goal < 2 s)")
    print(f"  every pair (baseline)        {base:8.3f} s   {all_pairs} pairs merged")
    print(f"  pairs with disjoint paths merged: {merged - overlapping}   "
          f"(view / baseline = {view / base:.3f})")


if __name__ == "__main__":
    main()
