"""flux run: `per_node` tasks per node on the listed hosts."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class FluxRun(Launcher):
    name = "flux"

    def command(self, req: LaunchRequest) -> list[str]:
        n = len(req.hosts)
        cmd = ["flux", "run", f"--nodes={n}", f"--ntasks={req.ntasks}",
               f"--tasks-per-node={req.per_node}",
               f"--requires=host:{','.join(req.hosts)}"]
        if req.cpus_per_node:
            cmd.append(f"--cores-per-task={req.cpus_per_node}")
        if req.gpus_per_node:
            cmd.append(f"--gpus-per-task={req.gpus_per_node}")
        return cmd + list(req.argv)
