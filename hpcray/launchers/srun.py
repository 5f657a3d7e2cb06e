"""srun: `per_node` tasks per node as an overlapping step, unbound so Ray may use every CPU."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class Srun(Launcher):
    name = "srun"
    node_name_env = "SLURMD_NODENAME"

    def command(self, req: LaunchRequest) -> list[str]:
        n = len(req.hosts)
        cmd = [
            "srun", f"--nodes={n}", f"--ntasks={req.ntasks}",
            f"--ntasks-per-node={req.per_node}",
            f"--nodelist={','.join(req.hosts)}",
            "--overlap",           # share the allocation with later steps (driver, stages)
            "--cpu-bind=none",     # Ray schedules its own workers across all cores
            "--kill-on-bad-exit=0",  # one failing node is reported, not fatal for the rest
            "--wait=0",
        ]
        if req.per_node > 1:  # ranks 0..k-1 on the first node, as mpiexec places them
            cmd.append("--distribution=block")
        if req.gpus_per_node:
            cmd.append(f"--gpus-per-node={req.gpus_per_node}")
        return cmd + list(req.argv)
