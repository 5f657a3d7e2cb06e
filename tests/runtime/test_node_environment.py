"""Temp dir length, head address, GPU env translation and the token file."""

from __future__ import annotations

import stat

import pytest

from hpcray.errors import BootstrapError
from hpcray.runtime import gpus
from hpcray.runtime.auth import auth_env, create_token
from hpcray.runtime.network import host_port, interface_address, node_address
from hpcray.runtime.tempdir import check_socket_length, short_id, temp_dir_for


def test_short_ids():
    assert short_id("1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov") == "1234567"
    assert short_id("local-4242") == "local4242"
    assert short_id("ƒ2bHNxE7Hm") == "2bHNxE7Hm"


def test_temp_dir_is_short_and_per_node(monkeypatch):
    assert temp_dir_for("/tmp", "2934711", 0) == "/tmp/hr2934711n0"
    monkeypatch.setenv("USER", "ada")  # Frontier's NVMe: /mnt/bb/$USER
    assert temp_dir_for("/mnt/bb/$USER", "2934711", 1) == "/mnt/bb/ada/hr2934711n1"
    assert temp_dir_for("/tmp", "2934711", 1) != temp_dir_for("/tmp", "2934711", 0)


def test_long_temp_root_is_refused_before_start():
    with pytest.raises(BootstrapError, match="107"):
        check_socket_length("/lustre/orion/bio123/scratch/someuser/very/long/path/to/tmp/x")


def test_ipv6_is_bracketed():
    assert host_port("10.1.2.3", 6379) == "10.1.2.3:6379"
    assert host_port("fd00::2", 6379) == "[fd00::2]:6379"
    assert host_port("nid001", 6379) == "nid001:6379"


def test_interface_address_and_errors():
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(BootstrapError, match="'hsn9' not found"):
        node_address("hsn9", None, "host")


def test_address_format_for_polaris_style_hostnames():
    assert node_address(None, "{host}", "localhost.example") in ("127.0.0.1", "::1")


# A node's interfaces and its names on the high-speed network, as recorded on each machine
# (addresses from the sites' private ranges; the form is what matters).
RECORDED = {
    "frontier": ("frontier08841", {"hsn0": "10.128.2.17", "hsn1": "10.128.66.17",
                                   "nmn0": "10.100.1.17"}, {}),
    "perlmutter": ("nid001234", {"hsn0": "10.249.4.10", "nmn0": "10.100.104.10"}, {}),
    "delta": ("gpua041", {"hsn0": "172.28.23.141", "eno1": "141.142.140.141"}, {}),
    "polaris": ("x3006c0s13b0n0", {"bond0": "10.140.56.30", "hsn0": "10.201.2.30",
                                   "hsn1": "10.201.2.31"},
                {"x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov": "10.201.2.30"}),
    "aurora": ("x4102c5s2b0n0", {"bond0": "10.115.31.60", "hsn0": "10.168.0.60"},
               {"x4102c5s2b0n0.hsn.cm.aurora.alcf.anl.gov": "10.168.0.60"}),
}
EXPECTED = {"frontier": "10.128.2.17", "perlmutter": "10.249.4.10", "delta": "172.28.23.141",
            "polaris": "10.201.2.30", "aurora": "10.168.0.60"}


@pytest.mark.parametrize("site", sorted(RECORDED))
def test_each_site_takes_the_address_its_recipe_names(site, monkeypatch):
    """Polaris and Aurora: the host's .hsn.cm name, as ALCF's Ray recipe resolves it (bond0
    does not carry worker-to-head traffic); the Slurm machines: hsn0."""
    import socket
    from types import SimpleNamespace

    from hpcray.sites import load_site

    host, interfaces, names = RECORDED[site]
    monkeypatch.setattr("psutil.net_if_addrs", lambda: {
        name: [SimpleNamespace(family=socket.AF_INET, address=addr)]
        for name, addr in interfaces.items()})
    monkeypatch.setattr("socket.getaddrinfo", lambda name, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[name], 0))])
    profile = load_site(site)
    assert node_address(profile.network_interface, profile.head_address, host,
                        profile.address_from) == EXPECTED[site]


def test_amd_rocr_is_translated_for_ray():
    env = gpus.translate("amd", {"ROCR_VISIBLE_DEVICES": "4,5,6,7"})
    # ROCR keeps isolating (and renumbering); HIP indexes within it as Ray requires
    assert env.changes == {"HIP_VISIBLE_DEVICES": "0,1,2,3"}
    assert env.visible == 4
    assert gpus.translate("amd", {"ROCR_VISIBLE_DEVICES": "0", "HIP_VISIBLE_DEVICES": "0"}
                          ).changes == {}


def test_intel_flat_hierarchy_and_the_node_pinned_to_its_tiles():
    env = gpus.translate("intel", {}, planned=12)
    assert env.changes == {"ZE_FLAT_DEVICE_HIERARCHY": "FLAT",
                           "ONEAPI_DEVICE_SELECTOR": "level_zero:" + ",".join(
                               str(i) for i in range(12))}
    assert env.visible is None
    # a launcher's mask renumbers the tiles it leaves: the selector counts from 0
    env = gpus.translate("intel", {"ZE_AFFINITY_MASK": "4,5,6,7"}, planned=12)
    assert env.changes["ONEAPI_DEVICE_SELECTOR"] == "level_zero:0,1,2,3"
    assert env.visible == 4
    assert "ONEAPI_DEVICE_SELECTOR" not in gpus.translate("intel", {}, planned=0).changes


def test_intel_task_isolation_needs_dpctl():
    assert "dpctl is not importable" in gpus.intel_task_isolation(lambda name: None)
    assert gpus.intel_task_isolation(lambda name: object()) is None


def test_nvidia_counts_visible_devices():
    assert gpus.translate("nvidia", {"CUDA_VISIBLE_DEVICES": "0,1"}).visible == 2
    assert gpus.translate("nvidia", {}).visible is None
    assert gpus.node_gpu_count(4, 2) == 2      # never more than the process can see
    assert gpus.node_gpu_count(4, None) == 4   # nothing set: the allocation's count
    assert gpus.node_gpu_count(0, 2) == 2


def test_token_file_is_private(tmp_path):
    path = create_token(tmp_path / "secrets" / "ray-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text()) == 64
    assert create_token(path).read_text() != ""  # re-creation works
    assert auth_env(path) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
