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


def test_rays_fixed_metric_ports_move_into_the_block_apart_from_every_other_port():
    block = ports.PortBlock(30000)
    moved = {int(v) for v in block.ray_port_variables().values()}
    assert set(block.ray_port_variables()) == {"AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT"}
    flags = {int(f.split("=")[1]) for f in block.ray_flags()[:-2]}
    others = flags | {block.serve_http_port, *(block.base + o for o in ports.PROGRAM_OFFSETS)}
    assert moved <= set(block.all_ports()) and len(moved) == 2 and not moved & others
    assert max(moved) < block.min_worker_port


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


def test_program_ports_come_from_the_nodes_block_below_the_workers(monkeypatch):
    block = ports.claim_block("job-p", 0)
    monkeypatch.setenv("HPCRAY_PORT_BLOCK", str(block.base))
    try:
        got = [ports.claim_program_port("svc/r") for _ in range(3)]
        assert len(set(got)) == 3  # one per replica, never shared
        assert all(block.base + 20 <= p < block.min_worker_port for p in got)
        ports.release_program_port(got[0])
        assert ports.claim_program_port("svc/r2") == got[0]  # a released port is taken again
    finally:
        ports.release_block(block)


def test_a_dead_replicas_port_claim_is_stale_and_another_replicas_is_not_released(
        monkeypatch, tmp_path):
    monkeypatch.setenv("HPCRAY_PORT_BLOCK", "40000")
    ports.CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    first = 40000 + ports.PROGRAM_OFFSETS[0]
    (ports.CLAIM_DIR / f"port-{first}").write_text("999999999 dead/replica\n")  # no such pid
    assert ports.claim_program_port("svc/r") == first
    (ports.CLAIM_DIR / f"port-{first}").write_text("1 another/replica\n")  # a live pid
    ports.release_program_port(first)  # not ours: kept
    assert (ports.CLAIM_DIR / f"port-{first}").exists()


def test_all_program_ports_taken_is_an_error_naming_the_block(monkeypatch):
    monkeypatch.setenv("HPCRAY_PORT_BLOCK", "41000")
    ports.CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    for offset in ports.PROGRAM_OFFSETS:
        (ports.CLAIM_DIR / f"port-{41000 + offset}").write_text("1 other\n")
    with pytest.raises(OSError, match="all 32 program-service ports of this node's block 41000"):
        ports.claim_program_port("svc/r")


def test_outside_a_node_the_kernel_picks_a_free_port(monkeypatch):
    monkeypatch.delenv("HPCRAY_PORT_BLOCK", raising=False)
    port = ports.claim_program_port("svc/r")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free
