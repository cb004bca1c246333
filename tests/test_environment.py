"""The record of where a result was made (versions, machine, commit) that run summaries carry."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import diffboost
from diffboost.utils import environment as env_module


def test_commit_is_the_checkouts_head_and_says_when_files_differ(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "checkout"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setattr(env_module, "__file__", str(pkg / "mod.py"))
    env_module.code_commit.cache_clear()
    try:
        assert env_module.code_commit() == head
        (pkg / "mod.py").write_text("x = 2\n")
        env_module.code_commit.cache_clear()
        assert env_module.code_commit() == head + "+modified"
        outside = tmp_path / "installed" / "mod.py"  # an installed wheel: no checkout, no commit
        outside.parent.mkdir()
        monkeypatch.setattr(env_module, "__file__", str(outside))
        env_module.code_commit.cache_clear()
        assert env_module.code_commit() is None
    finally:
        env_module.code_commit.cache_clear()


def test_environment_names_versions_and_machine():
    import torch

    env = env_module.environment("cpu")
    assert env["versions"]["diffboost"] == diffboost.__version__ and env["versions"]["torch"] == torch.__version__
    assert env["machine"]["device"] == "cpu" and env["machine"]["cores"] >= 1 and env["machine"]["cpu"]
