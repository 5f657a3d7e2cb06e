"""LSF launchers: blaunch (any LSF) and jsrun (CSM systems such as Summit and Lassen)."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class Blaunch(Launcher):
    name = "blaunch"

    def command(self, req: LaunchRequest) -> list[str]:
        hosts = [h for h in req.hosts for _ in range(req.per_node)]  # one process per entry
        return ["blaunch", "-z", " ".join(hosts), *req.argv]


class Jsrun(Launcher):
    """jsrun places resource sets on the job's compute hosts in order; it cannot name hosts,
    so it is used only for the whole allocation (each agent finds its role from its host)."""

    name = "jsrun"

    def command(self, req: LaunchRequest) -> list[str]:
        return ["jsrun", "--nrs", str(len(req.hosts)), "--rs_per_host", "1",
                "--tasks_per_rs", str(req.per_node), "--cpu_per_rs", "ALL_CPUS",
                "--gpu_per_rs", "ALL_GPUS", "--bind", "none", *req.argv]
