from __future__ import annotations

import socket

import pytest

from hpcray.runtime import ports


@pytest.fixture(autouse=True)
def claims(tmp_path, monkeypatch):
    monkeypatch.setattr(ports, "CLAIM_DIR", tmp_path / "claims")


def test_every_ray_port_flag_is_in_the_block():
    block = ports.PortBlock(30000)
    flags = dict(f.split("=") for f in block.ray_flags())
    assert set(flags) == set(ports.SERVICE_PORTS) | {"--min-worker-port", "--max-worker-port"}
    values = [int(v) for v in flags.values()]
    assert min(values) == 30000 and max(values) == 30199
    assert len(set(values)) == len(values)


def test_worker_nodes_do_not_pass_head_only_flags():
    assert not any(f.startswith("--port=") for f in ports.PortBlock(30000).ray_flags(head=False))


def test_two_jobs_on_one_host_get_different_blocks():
    a = ports.claim_block("job-a", 0)
    b = ports.claim_block("job-b", 0)
    c = ports.claim_block("job-a", 1)  # second emulated node of job a on the same host
    assert len({a.base, b.base, c.base}) == 3
    for blk in (a, b, c):
        ports.release_block(blk)


def test_same_preferred_block_is_not_shared():
    first = ports.claim_block("same", 0)
    second = ports.claim_block("same", 0)  # e.g. a hash collision with another job
    assert first.base != second.base


def test_busy_port_moves_to_another_block():
    preferred = ports.FIRST_PORT + ports.preferred_block("busy", 0) * ports.BLOCK_SIZE
    with socket.socket() as s:
        s.bind(("0.0.0.0", preferred + 1))
        s.listen()
        block = ports.claim_block("busy", 0)
    assert block.base != preferred


def test_stale_claim_of_dead_process_is_reused(tmp_path):
    index = ports.preferred_block("stale", 0)
    ports.CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    (ports.CLAIM_DIR / f"block-{index}").write_text("999999999 someone\n")
    block = ports.claim_block("stale", 0)
    assert block.base == ports.FIRST_PORT + index * ports.BLOCK_SIZE


def test_explicit_base_checks_ports():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            ports.claim_block("x", 0, base=busy - 3)
