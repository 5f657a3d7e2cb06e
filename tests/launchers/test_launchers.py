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
    assert launcher.per_process_env(REQ) == [{"HPCRAY_NODE_NAME": "n1"},
                                             {"HPCRAY_NODE_NAME": "n2"}]
