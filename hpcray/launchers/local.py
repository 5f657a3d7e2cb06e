"""Local: `per_node` processes per (emulated) node on this machine, each told its node
name and rank as an MPI launcher would."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class LocalLauncher(Launcher):
    name = "local"
    node_name_env = "HPCRAY_NODE_NAME"

    def command(self, req: LaunchRequest) -> list[str]:
        return list(req.argv)

    def per_process_env(self, req: LaunchRequest) -> list[dict[str, str]]:
        return [{"HPCRAY_NODE_NAME": host, "HPCRAY_RANK": str(i * req.per_node + r),
                 "HPCRAY_LOCAL_RANK": str(r), "HPCRAY_NRANKS": str(req.ntasks)}
                for i, host in enumerate(req.hosts) for r in range(req.per_node)]
