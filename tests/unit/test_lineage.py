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


def _mixed_frame() -> pd.DataFrame:
    """Six rows whose dtypes depend on the whole column: an int column with nulls
    (float64), a categorical, strings with a None, tz-aware timestamps with a NaT."""
    return pd.DataFrame(
        {
            "n": pd.Series([1, 2, None, 4, 5, None]),
            "kind": pd.Categorical(["a", "b", "a", None, "c", "b"]),
            "name": ["x", None, "z", "x", "y", "w"],
            "at": pd.to_datetime(
                ["2026-01-01", "2026-01-02", None, "2026-01-04", "2026-01-05", "2026-01-06"]
            ).tz_localize("UTC"),
        }
    )


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param([6], id="whole"),
        pytest.param([2, 4, 6], id="first-chunk-without-nulls"),
        pytest.param([1, 1, 5, 6], id="with-an-empty-chunk"),
    ],
)
def test_a_digest_fed_chunk_by_chunk_is_the_whole_frames(cuts):
    frame = _mixed_frame()
    assert frame["n"].dtype == "float64"
    digest = lineage.FrameDigest(frame.dtypes)
    for a, b in zip([0, *cuts], cuts, strict=False):
        digest.update(frame.iloc[a:b])
    assert digest.hexdigest() == lineage.frame_digest(frame)


def test_a_streamed_digest_sees_every_chunk_and_refuses_a_chunk_of_other_dtypes():
    frame = _mixed_frame()
    whole = lineage.frame_digest(frame)
    partial = lineage.FrameDigest(frame.dtypes)
    partial.update(frame.iloc[:4])
    assert partial.hexdigest() != whole
    changed = lineage.FrameDigest(frame.dtypes)
    changed.update(frame.iloc[:3])
    changed.update(frame.iloc[3:].assign(name="v"))
    assert changed.hexdigest() != whole
    # a chunk read on its own: no nulls in it, so its ints come as int64
    alone = lineage.FrameDigest(frame.dtypes)
    with pytest.raises(ValueError, match="n"):
        alone.update(frame.iloc[:2].astype({"n": "int64"}))
    with pytest.raises(ValueError, match="their order"):
        alone.update(frame.iloc[:2][["kind", "n", "name", "at"]])
