"""Fixtures for the text front-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def zh_resources() -> Path:
    """The Chinese lexicon and polyphone model, fetched from PyPI into the cache if needed.

    Fails (does not skip) when they cannot be obtained: the Chinese goldens must run.
    """
    from metis_cli.text import fetch_zh_frontend

    return fetch_zh_frontend()
