"""Reading the allocation inside a job, from environments recorded at each kind of site."""

from __future__ import annotations

import pytest

from hpcray.errors import SchedulerError
from hpcray.schedulers import get_scheduler
from hpcray.schedulers.flux import parse_resource_list
from hpcray.schedulers.hostlist import expand_counts, expand_hostlist
from hpcray.schedulers.slurm import gpus_from_tres


@pytest.mark.parametrize("text,hosts", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("frontier[00001-00002,00010]", ["frontier00001", "frontier00002", "frontier00010"]),
    ("nid[001234,001240-001241],login01", ["nid001234", "nid001240", "nid001241", "login01"]),
    ("gpu-a[1-2]-b", ["gpu-a1-b", "gpu-a2-b"]),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node]1[", "node[3-1]", "node[a-b]"])
def test_bad_hostlist(bad):
    with pytest.raises(ValueError):
        expand_hostlist(bad)


def test_expand_counts():
    assert expand_counts("64(x2),32") == [64, 64, 32]
    assert expand_counts("2") == [2]


def alloc(scheduler, env, cpus=1, gpus=0, **kw):
    return get_scheduler(scheduler).allocation_from_env(env, default_cpus=cpus, default_gpus=gpus,
                                                        **kw)


def test_frontier_slurm_env():
    # recorded on a Frontier batch node, 2 nodes, -S 8 (56 cores usable), 8 GCDs
    env = {"SLURM_JOB_ID": "2934711", "SLURM_JOB_NODELIST": "frontier[08841-08842]",
           "SLURM_JOB_CPUS_PER_NODE": "112(x2)", "SLURM_GPUS_ON_NODE": "8",
           "ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    a = alloc("slurm", env, cpus=56, gpus=8)
    assert a.job_id == "2934711"
    assert [n.name for n in a.nodes] == ["frontier08841", "frontier08842"]
    assert [n.cpus for n in a.nodes] == [112, 112]  # hardware threads as Slurm counts them
    assert {n.gpus for n in a.nodes} == {8}


def test_perlmutter_reads_tres_per_task():
    # Perlmutter leaves SLURM_GPUS_PER_TASK empty and sets SLURM_TRES_PER_TASK
    env = {"SLURM_JOB_ID": "31337", "SLURM_JOB_NODELIST": "nid[001001,001005]",
           "SLURM_JOB_CPUS_PER_NODE": "128(x2)", "SLURM_GPUS_PER_TASK": "",
           "SLURM_TRES_PER_TASK": "cpu=128,gres/gpu=4"}
    a = alloc("slurm", env, cpus=64, gpus=0)
    assert [n.gpus for n in a.nodes] == [4, 4]
    assert [n.name for n in a.nodes] == ["nid001001", "nid001005"]


@pytest.mark.parametrize("text,gpus", [
    ("cpu=32,gres/gpu=4", 4), ("gres/gpu:a100=2", 2), ("cpu:8,gres:gpu:1", 1), ("cpu=4", None)])
def test_tres_formats(text, gpus):
    assert gpus_from_tres(text) == gpus


def test_delta_gpus_per_node_with_type():
    env = {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "gpua001",
           "SLURM_JOB_CPUS_PER_NODE": "16", "SLURM_GPUS_PER_NODE": "a100:2"}
    a = alloc("slurm", env, cpus=64, gpus=4)
    assert (a.nodes[0].cpus, a.nodes[0].gpus) == (16, 2)


def test_not_in_a_slurm_job():
    with pytest.raises(SchedulerError, match="not inside a Slurm job"):
        alloc("slurm", {})


def test_polaris_pbs_nodefile(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov\n"
                        "x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov\n")
    env = {"PBS_JOBID": "1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
           "PBS_NODEFILE": str(nodefile), "NCPUS": "64"}
    a = alloc("pbs", env, cpus=32, gpus=4)
    assert a.job_id.startswith("1234567.")
    assert [n.name for n in a.nodes] == ["x3006c0s13b0n0.hsn.cm.polaris.alcf.anl.gov",
                                         "x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov"]
    assert a.nodes[0].cpus == 64 and a.nodes[0].gpus == 4


@pytest.mark.parametrize(("ncpus", "ngpus", "exclusive", "expected"), [
    ("1", "0", True, (102, 12)),   # recorded on Aurora: select=2, place=excl, no ncpus asked
    ("208", None, True, (102, 12)),  # PBS counting hardware threads: the profile still wins
    ("16", "2", False, (16, 2)),   # shared nodes, select=2:ncpus=16:ngpus=2: what it holds
    (None, None, False, (102, 12)),  # nothing said: the profile
])
def test_pbs_cpus_come_from_the_profile_for_whole_nodes(ncpus, ngpus, exclusive, expected,
                                                        tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x4102c5s2b0n0\nx4102c5s3b0n0\n")
    env = {"PBS_JOBID": "99.aurora-pbs", "PBS_NODEFILE": str(nodefile),
           **({"NCPUS": ncpus} if ncpus else {}), **({"NGPUS": ngpus} if ngpus else {})}
    a = alloc("pbs", env, cpus=102, gpus=12, exclusive=exclusive)
    assert [(n.cpus, n.gpus) for n in a.nodes] == [expected, expected]


def test_aurora_nodefile_with_repeated_slots(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x4102c5s2b0n0\nx4102c5s2b0n0\nx4102c5s3b0n0\nx4102c5s3b0n0\n")
    a = alloc("pbs", {"PBS_JOBID": "99.aurora-pbs", "PBS_NODEFILE": str(nodefile)},
              cpus=102, gpus=12)
    assert [n.name for n in a.nodes] == ["x4102c5s2b0n0", "x4102c5s3b0n0"]
    assert a.nodes[1].gpus == 12


def test_lsf_mcpu_hosts_skips_launch_node():
    # CSM systems list the launch node first with one slot
    env = {"LSB_JOBID": "4242", "LSB_MCPU_HOSTS": "batch3 1 lassen101 40 lassen102 40"}
    a = alloc("lsf", env, cpus=0, gpus=4)
    assert [(n.name, n.cpus) for n in a.nodes] == [("lassen101", 40), ("lassen102", 40)]


def test_lsf_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("c1\nc1\nc2\nc2\n")
    a = alloc("lsf", {"LSB_JOBID": "1", "LSB_DJOB_HOSTFILE": str(hostfile)}, cpus=0)
    assert [(n.name, n.cpus) for n in a.nodes] == [("c1", 2), ("c2", 2)]


FLUX_RESOURCE_LIST = """\
      2      192        8 tuolumne[1001-1002]
"""


def test_flux_resource_list():
    nodes = parse_resource_list(FLUX_RESOURCE_LIST)
    assert [(n.name, n.cpus, n.gpus) for n in nodes] == [
        ("tuolumne1001", 96, 4), ("tuolumne1002", 96, 4)]
    a = alloc("flux", {"FLUX_JOB_ID": "fABC"}, resource_list=FLUX_RESOURCE_LIST)
    assert a.job_id == "fABC" and len(a.nodes) == 2


def test_local_emulated_nodes():
    a = alloc("local", {}, cpus=2, gpus=0, requested_nodes=2)
    assert len(a.nodes) == 2 and a.nodes[0].name.endswith("-n0")
