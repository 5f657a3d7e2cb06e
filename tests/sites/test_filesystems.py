"""Which paths every node of a job sees (hpcray/sites/filesystems.py)."""

from __future__ import annotations

from hpcray.sites import load_site
from hpcray.sites.filesystems import mount_type, node_local_reason

MOUNTS = """\
/dev/vda / ext4 rw 0 0
tmpfs /dev/shm tmpfs rw 0 0
tmpfs /run/user/1000 tmpfs rw 0 0
10.10.0.1@o2ib:/orion /lustre/orion lustre rw 0 0
"""


def test_the_longest_mount_point_holds_the_path(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert mount_type("/lustre/orion/bio/runs", str(mounts)) == "lustre"
    assert mount_type("/run/user/1000/x", str(mounts)) == "tmpfs"
    assert mount_type("/home/u", str(mounts)) == "ext4"
    assert mount_type("/x", str(tmp_path / "none")) is None


def test_node_local_paths_and_memory_filesystems(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    frontier = load_site("frontier")
    assert "under /tmp" in node_local_reason("/tmp/runs/x", frontier, str(mounts))
    assert "tmpfs" in node_local_reason("/run/user/1000/venv/bin/python", frontier, str(mounts))
    assert node_local_reason("/lustre/orion/bio/runs", frontier, str(mounts)) is None
    # a venv's python links out of the venv: its directory is what counts, resolved
    local = tmp_path / "local"
    (local / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "venv").symlink_to(local / "venv")
    site = frontier.model_copy(update={"node_local_paths": [str(local)]})
    assert f"under {local}" in node_local_reason(
        f"{tmp_path}/home/venv/bin/python", site, str(mounts))
    assert node_local_reason(f"{tmp_path}/home/python", site, str(mounts)) is None
    # a node-local path named through a link (macOS's /tmp -> /private/tmp)
    (tmp_path / "scratch-link").symlink_to(local)
    linked = frontier.model_copy(update={"node_local_paths": [str(tmp_path / "scratch-link")]})
    assert node_local_reason(f"{local}/runs/x", linked, str(mounts)) is not None


def test_a_site_whose_nodes_share_every_path(tmp_path):
    """The test Slurm's emulated nodes are one host: nothing is node-local, not even a
    memory filesystem (CI machines may mount /tmp as tmpfs)."""
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    shared = load_site("frontier").model_copy(update={"node_local_paths": []})
    assert node_local_reason("/dev/shm/x", shared, str(mounts)) is None
