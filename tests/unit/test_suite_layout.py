"""The suite's own layout: pytest imports test modules by their basename (the test
folders are not packages), so two with the same name stop the whole run at collection."""

from __future__ import annotations

from collections import Counter

from closedloop.core.settings import PROJECT_ROOT


def test_every_test_module_has_a_basename_of_its_own():
    names = Counter(p.name for p in (PROJECT_ROOT / "tests").rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
