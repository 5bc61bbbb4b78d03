"""Fixtures for the enn tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from enn_testing import write_clip_dir


@pytest.fixture
def clip_dir(tmp_path: Path) -> Path:
    """A folder holding only the tiny CLIP's open_clip config (no weights)."""
    return write_clip_dir(tmp_path)
