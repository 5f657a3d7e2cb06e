"""What a stage task runs with `container:` (and `launch:`), without Ray: the task's
environment and GPUs go in, the run and workflow directories are bound, each MPI rank runs
in the image after the launcher."""

from __future__ import annotations

from hpcray.spec.containers import ContainerSpec
from hpcray.stages.tasks import in_container, launched, run_command

SPEC = ContainerSpec(image="/img/sim.sif", runtime="apptainer", gpu_vendor="amd")
ENV = {"HPCRAY_RUN_DIR": "/runs/r1", "HPCRAY_STAGE": "sim", "HPCRAY_TASK_INDEX": "3"}


def test_the_task_env_and_gpus_go_in(monkeypatch):
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "2")
    monkeypatch.setenv("HPCRAY_RAY_OF", "hpcray-slurm-1-2/n1")
    monkeypatch.setenv("SECRET_OF_THE_HOST", "x")
    got = in_container(SPEC, ["./sim", "3"], ENV, "/wf")
    assert got[:7] == ["apptainer", "exec", "--rocm", "--bind", "/runs/r1:/runs/r1", "--bind",
                       "/wf:/wf"]
    envs = [got[i + 1] for i, a in enumerate(got) if a == "--env"]
    assert "ROCR_VISIBLE_DEVICES=2" in envs and "HPCRAY_RAY_OF=hpcray-slurm-1-2/n1" in envs
    assert "HPCRAY_STAGE=sim" in envs and not any(e.startswith("SECRET") for e in envs)
    assert got[-5:] == ["--pwd", "/wf", "/img/sim.sif", "./sim", "3"]


def test_each_rank_runs_in_the_image_after_the_launcher():
    pod = SPEC.model_copy(update={"runtime": "podman", "image": "sim:1"})
    argv = in_container(pod, ["./mpi_sim"], ENV, "/wf", ranks=True)
    assert "SLURM_PROCID" in argv and "PMI_RANK" in argv  # passed through by name
    [(cmd, _)] = launched("srun", ["n1", "n2"], argv, per_node=2)
    at = cmd.index("podman")
    assert cmd[0] == "srun" and "--ntasks=4" in cmd[:at]
    assert cmd[at:at + 2] == ["podman", "run"] and cmd[-2:] == ["sim:1", "./mpi_sim"]


def test_an_unresolved_container_is_a_recorded_failure(tmp_path):
    got = run_command(["true"], ENV, str(tmp_path / "t"), (str(tmp_path), None),
                      None, ContainerSpec(image="x"))
    assert not got["ok"] and "no container runtime" in got["error"]


def test_each_rank_keeps_its_own_rank_and_gpus(monkeypatch):
    """The launching worker's GPU and rank variables are not baked into every rank's command
    line: the launcher sets them per rank, and they pass through by name."""
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "2")
    monkeypatch.setenv("HPCRAY_RANK", "0")
    for runtime in ("apptainer", "podman", "enroot"):
        spec = SPEC.model_copy(update={"runtime": runtime})
        argv = in_container(spec, ["./mpi_sim"], ENV, "/wf", ranks=True)
        assert not [a for a in argv if "ROCR_VISIBLE_DEVICES=" in a or "HPCRAY_RANK=" in a], \
            (runtime, argv)
        assert any("HPCRAY_STAGE=sim" in a for a in argv)  # the task's own still go in
        if runtime != "apptainer":  # apptainer passes the caller's environment on by itself
            assert "ROCR_VISIBLE_DEVICES" in argv and "HPCRAY_RANK" in argv, (runtime, argv)
