"""Fixtures for a remote site (tests/remote/site.py): made for each test, removed after it,
also when it fails."""

from __future__ import annotations

import pytest

from tests.remote.site import ONE_WAY_MS, can_make_namespaces, loopback_servers, remote_site

__all__ = ["ONE_WAY_MS"]


@pytest.fixture
def loopback_server():
    with loopback_servers() as start:
        yield start


@pytest.fixture(name="remote_site")
def _remote_site():
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with remote_site() as site:
        yield site
