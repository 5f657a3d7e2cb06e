"""The memory a job holds on a node (scheduler's figure, cgroup limit), and Ray's object store
sized from it rather than from the node's RAM."""

from __future__ import annotations

from pathlib import Path

from hpcray.bootstrap.node import object_store_bytes
from hpcray.bootstrap.plan import ClusterPlan, NodePlan
from hpcray.runtime.memory import cgroup_limit, job_memory
from hpcray.schedulers import get_scheduler

GB = 2**30


def fake_cgroup(tmp_path: Path, lines: str, files: dict[str, str]) -> tuple[str, str]:
    proc = tmp_path / "cgroup"
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc.write_text(lines)
    root = tmp_path / "fs"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_limit_on_the_jobs_parent(tmp_path):
    # Slurm's cgroup v2 layout: the limit sits on the job, the step below it has none
    proc, root = fake_cgroup(tmp_path, "0::/system.slice/slurmstepd.scope/job_77/step_0/user\n", {
        "system.slice/slurmstepd.scope/job_77/memory.max": str(208 * GB),
        "system.slice/slurmstepd.scope/job_77/step_0/user/memory.max": "max",
        "memory.max": "max"})
    assert cgroup_limit(proc, root) == 208 * GB


def test_cgroup_v1_and_no_limit(tmp_path):
    proc, root = fake_cgroup(tmp_path, "5:memory:/slurm/uid_1/job_9\n4:cpu,cpuacct:/x\n", {
        "memory/slurm/uid_1/job_9/memory.limit_in_bytes": str(64 * GB),
        "memory/memory.limit_in_bytes": "9223372036854771712"})
    assert cgroup_limit(proc, root) == 64 * GB
    proc, root = fake_cgroup(tmp_path / "b", "0::/\n", {"memory.max": "max"})
    assert cgroup_limit(proc, root) is None
    # a malformed line is skipped; a namespace's .. does not climb out of the root
    proc, root = fake_cgroup(tmp_path / "c", "garbage\n0::/../../job_3\n", {
        "job_3/memory.max": str(8 * GB), "memory.max": "max"})
    assert cgroup_limit(proc, root) == 8 * GB
    assert cgroup_limit(str(tmp_path / "missing"), root) is None


def test_slurm_memory_from_a_recorded_delta_environment():
    slurm = get_scheduler("slurm")
    assert slurm.memory_from_env({"SLURM_MEM_PER_NODE": "212992"}) == 208 * GB  # --mem=208G
    # no --mem on Delta: 1000 MB per core, 16 cores
    assert slurm.memory_from_env({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "16"}) \
        == 16_000 * 2**20
    assert slurm.memory_from_env({}) is None
    assert get_scheduler("pbs").memory_from_env({"SLURM_MEM_PER_NODE": "1"}) is None


def test_job_memory_is_the_least_of_the_figures():
    assert job_memory(64 * GB, 100 * GB, 240 * GB) == 64 * GB
    assert job_memory(None, 100 * GB, 240 * GB) == 100 * GB
    assert job_memory(None, None, 240 * GB) == 240 * GB


def test_object_store_from_what_the_job_was_given(monkeypatch):
    """A 4-GPU Delta job with --mem=64G on a 256 GB node: the store is 30 % of 64 GB,
    not of the node."""
    from types import SimpleNamespace

    plan = ClusterPlan("c", "1", "slurm", "nvidia", [NodePlan("n", 0, 64, 4)], "/t")
    monkeypatch.setattr("hpcray.bootstrap.node.shutil.disk_usage",
                        lambda path: SimpleNamespace(free=128 * GB))
    monkeypatch.setattr("hpcray.runtime.memory.psutil.virtual_memory",
                        lambda: SimpleNamespace(available=250 * GB))
    monkeypatch.setattr("hpcray.bootstrap.node.cgroup_limit", lambda: None)
    assert object_store_bytes(plan, 1, 64 * GB) == int(0.3 * 64 * GB)
    assert object_store_bytes(plan, 1, None) == int(0.3 * 250 * GB)
    monkeypatch.setattr("hpcray.bootstrap.node.cgroup_limit", lambda: 32 * GB)
    assert object_store_bytes(plan, 1, 64 * GB) == int(0.3 * 32 * GB)
