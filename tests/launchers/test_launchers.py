"""Launch command lines, exactly (srun also runs for real in tests/slurm)."""

from __future__ import annotations

from hpcray.launchers import LaunchRequest, get_launcher

REQ = LaunchRequest(hosts=("n1", "n2"), argv=("python", "-m", "hpcray", "node"),
                    gpus_per_node=4, cpus_per_node=64)


def test_srun():
    assert get_launcher("srun").command(REQ) == [
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--nodelist=n1,n2",
        "--overlap", "--cpu-bind=none", "--kill-on-bad-exit=0", "--wait=0",
        "--gpus-per-node=4", "python", "-m", "hpcray", "node"]


def test_mpiexec_pals():
    assert get_launcher("mpiexec").command(REQ) == [
        "mpiexec", "-n", "2", "--ppn", "1", "--hosts", "n1,n2", "--cpu-bind", "none",
        "python", "-m", "hpcray", "node"]


def test_lsf_launchers():
    assert get_launcher("blaunch").command(REQ) == [
        "blaunch", "-z", "n1 n2", "python", "-m", "hpcray", "node"]
    assert get_launcher("jsrun").command(REQ)[:4] == ["jsrun", "--nrs", "2", "--rs_per_host"]


def test_flux_run():
    assert get_launcher("flux").command(REQ) == [
        "flux", "run", "--nodes=2", "--ntasks=2", "--tasks-per-node=1",
        "--requires=host:n1,n2", "--cores-per-task=64", "--gpus-per-task=4",
        "python", "-m", "hpcray", "node"]


def test_local_gives_each_process_its_node_name():
    launcher = get_launcher("local")
    assert launcher.command(REQ) == ["python", "-m", "hpcray", "node"]
    assert [e["HPCRAY_NODE_NAME"] for e in launcher.per_process_env(REQ)] == ["n1", "n2"]


RANKS = LaunchRequest(hosts=("n1", "n2"), argv=("./a.out",), per_node=4)


def test_several_processes_per_node():
    assert get_launcher("srun").command(RANKS)[:4] == [
        "srun", "--nodes=2", "--ntasks=8", "--ntasks-per-node=4"]
    assert get_launcher("mpiexec").command(RANKS)[:5] == ["mpiexec", "-n", "8", "--ppn", "4"]
    assert get_launcher("flux").command(RANKS)[:5] == [
        "flux", "run", "--nodes=2", "--ntasks=8", "--tasks-per-node=4"]
    assert get_launcher("blaunch").command(RANKS) == [
        "blaunch", "-z", "n1 n1 n1 n1 n2 n2 n2 n2", "./a.out"]
    jsrun = get_launcher("jsrun").command(RANKS)
    assert jsrun[jsrun.index("--tasks_per_rs") + 1] == "4"


def test_local_numbers_ranks_as_an_mpi_launcher_would():
    envs = get_launcher("local").per_process_env(RANKS)
    assert [(e["HPCRAY_NODE_NAME"], e["HPCRAY_RANK"], e["HPCRAY_LOCAL_RANK"]) for e in envs] == [
        ("n1", "0", "0"), ("n1", "1", "1"), ("n1", "2", "2"), ("n1", "3", "3"),
        ("n2", "4", "0"), ("n2", "5", "1"), ("n2", "6", "2"), ("n2", "7", "3")]
    assert {e["HPCRAY_NRANKS"] for e in envs} == {"8"}
