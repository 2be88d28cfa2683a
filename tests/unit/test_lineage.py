"""Code versions and data digests: what step caching and lineage rely on."""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from closedloop.core import lineage


@pytest.fixture
def repo(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(lineage, "PROJECT_ROOT", tmp_path)
    monkeypatch.delenv("CLOSEDLOOP_GIT_COMMIT", raising=False)
    return tmp_path


def test_clean_checkout_is_its_commit(repo):
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert lineage.git_commit() == head


def test_uncommitted_edits_give_a_stable_dirty_version_per_diff(repo):
    (repo / "a.py").write_text("x = 2\n")
    first = lineage.git_commit()
    assert "-dirty-" in first and lineage.git_commit() == first
    (repo / "a.py").write_text("x = 3\n")
    assert lineage.git_commit() != first


def test_environment_override_and_no_git(tmp_path, monkeypatch):
    monkeypatch.setattr(lineage, "PROJECT_ROOT", tmp_path / "not-a-repo")
    monkeypatch.delenv("CLOSEDLOOP_GIT_COMMIT", raising=False)
    assert lineage.git_commit() == "unknown"
    monkeypatch.setenv("CLOSEDLOOP_GIT_COMMIT", "abc123")
    assert lineage.git_commit() == "abc123"


def test_frame_digest_sees_values_order_and_dtypes():
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    base = lineage.frame_digest(df)
    assert lineage.frame_digest(df.copy()) == base
    assert lineage.frame_digest(df.iloc[::-1]) != base
    assert lineage.frame_digest(df.assign(a=[1, 2, 4])) != base
    assert lineage.frame_digest(df.astype({"a": "float64"})) != base
