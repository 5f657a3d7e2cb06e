"""Local: `per_node` processes per (emulated) node on this machine, each told its node
name and rank as an MPI launcher would."""

from __future__ import annotations

from hpcray import env
from hpcray.launchers.base import Launcher, LaunchRequest


class LocalLauncher(Launcher):
    name = "local"
    node_name_env = env.NODE_NAME

    def command(self, req: LaunchRequest) -> list[str]:
        return list(req.argv)

    def per_process_env(self, req: LaunchRequest) -> list[dict[str, str]]:
        return [{env.NODE_NAME: host, env.RANK: str(i * req.per_node + r),
                 env.LOCAL_RANK: str(r), env.NRANKS: str(req.ntasks)}
                for i, host in enumerate(req.hosts) for r in range(req.per_node)]
