"""Each site page in docs/sites/ shows its profile's queue table exactly as hpcray uses it."""

from __future__ import annotations

import re

import pytest

from hpcray import api
from tests.conftest import REPO

SITES = ["frontier", "perlmutter", "delta", "polaris", "aurora"]


@pytest.mark.parametrize("site", SITES)
def test_the_site_page_lists_the_queue_table_hpcray_uses(site):
    page = (REPO / "docs" / "sites" / f"{site}.md").read_text()
    found = re.search(r"<!-- queues: [^\n]*-->\n(.*?)<!-- /queues -->", page, re.S)
    assert found, f"docs/sites/{site}.md has no generated queue table"
    assert found.group(1) == api.site_queues(site)
    assert "Source: https://" in found.group(1)
