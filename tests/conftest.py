"""Shared test setup: compiled programs go to a per-session cache, never the user's."""

from __future__ import annotations

import os

import pytest

# every compile in the test suite checks "valid IR in, valid IR out" after each pass
os.environ.setdefault("GRAPHC_VERIFY", "1")


@pytest.fixture(autouse=True, scope="session")
def session_cache_dir(tmp_path_factory):
    """GRAPHC_CACHE_DIR -> a fresh directory for the whole session (tests may override it)."""
    saved = os.environ.get("GRAPHC_CACHE_DIR")
    path = tmp_path_factory.mktemp("graphc-cache")
    os.environ["GRAPHC_CACHE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("GRAPHC_CACHE_DIR", None)
    else:
        os.environ["GRAPHC_CACHE_DIR"] = saved
