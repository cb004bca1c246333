"""The README and docs point at what a clone has: every relative link or image names a file the
repository tracks (a plot git ignores is a broken image on GitHub), and every ``#anchor`` names a
heading of its target, spelt as GitHub spells heading anchors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```.*?```", re.S)


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _tracked() -> set[Path] | None:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {(REPO / p).resolve() for p in out.decode().split("\0") if p}


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (underscores stay, as in
    a code name), spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.+)", line):
            a = github_anchor(m.group(1))
            out.add(a if a not in seen else f"{a}-{seen[a]}")
            seen[a] = seen.get(a, 0) + 1
    return out


def test_github_anchors_by_hand():
    assert github_anchor("Learning curves of the baselines (BUSI, DDTI)") == "learning-curves-of-the-baselines-busi-ddti"
    assert github_anchor("Unlabelled images in training at 10% labels (BUSI)") == \
        "unlabelled-images-in-training-at-10-labels-busi"
    assert github_anchor("Inside `nnU-Net` v2") == "inside-nnu-net-v2"
    assert github_anchor("Where `min_val_cases` applies") == "where-min_val_cases-applies"


def test_every_relative_link_names_a_tracked_file_and_an_existing_heading():
    tracked = _tracked()
    if tracked is None:
        pytest.skip("not a git checkout: which files are tracked is unknown")
    broken = []
    for page in _pages():
        for link in LINK.findall(FENCE.sub("", page.read_text())):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if target not in tracked and not target.is_dir():
                broken.append(f"{page.relative_to(REPO)}: {link} (not a tracked file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(REPO)}: {link} (no such heading)")
    assert not broken, "\n".join(broken)
