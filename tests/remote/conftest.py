"""Fixtures for a remote site (tests/remote/site.py): made for each test, removed after it,
also when it fails. The site's server records the requests it executed that carry an id as
instance "far" of service "llm" under the test's tmp_path: `read_executed(tmp_path, "llm")`
reads them, with a loopback server's started with `ledger=executed_file(tmp_path, "near")`."""

from __future__ import annotations

import pytest

from tests.remote.site import (
    ONE_WAY_MS,
    can_make_namespaces,
    executed_file,
    loopback_servers,
    remote_site,
)

__all__ = ["ONE_WAY_MS"]


@pytest.fixture
def loopback_server():
    with loopback_servers() as start:
        yield start


@pytest.fixture(name="remote_site")
def _remote_site(tmp_path):
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with remote_site(ledger=executed_file(tmp_path, "far")) as site:
        yield site
