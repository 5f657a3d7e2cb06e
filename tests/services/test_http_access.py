"""Who may call the HTTP API: the bearer check and where the proxy listens. The live run
(tests/services/test_live_run.py) checks the same through real requests."""

from __future__ import annotations

from hpcray.services.http_access import HttpAccess, authorized, digest


def test_only_the_runs_token_passes():
    expected = digest("s3cret")
    assert authorized("Bearer s3cret", expected)
    assert authorized("bearer  s3cret ", expected)  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3cretx",
                   "Basic s3cret", "s3cret", "Token s3cret"):
        assert not authorized(header, expected), header


def test_without_a_token_every_caller_passes():
    assert authorized(None, None) and authorized("Bearer anything", None)


def test_listen_choices_and_what_urls_name():
    head = HttpAccess.for_head("head", "10.1.2.3", 8000)
    assert (head.bind, head.host, head.token_sha256) == ("10.1.2.3", "10.1.2.3", None)
    loop = HttpAccess.for_head("loopback", "10.1.2.3", 8000)
    assert (loop.bind, loop.host) == ("127.0.0.1", "127.0.0.1")
    anywhere = HttpAccess.for_head("any", "10.1.2.3", 8000, "tok", "/run/secrets/http-token")
    assert (anywhere.bind, anywhere.host) == ("0.0.0.0", "10.1.2.3")
    # only the digest travels to the replicas; the token itself is not kept
    assert anywhere.token_sha256 == digest("tok") and "tok" not in vars(anywhere).values()
