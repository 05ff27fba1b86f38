"""Fixtures of the cedstore tests (helpers live in cedstore_helpers.py)."""

from __future__ import annotations

import pytest
from cedstore_helpers import Teacher, create_store, make_teacher


@pytest.fixture
def teacher() -> Teacher:
    return make_teacher()


@pytest.fixture
def store_path(tmp_path, teacher) -> str:
    """A complete, sealed store with keys, written by the public API (k=3)."""
    keys = [f"clip{i:03d}.wav" for i in range(teacher.num_samples)]
    return create_store(tmp_path / "teacher.ced", teacher, keys=keys)

