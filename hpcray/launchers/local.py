"""Local: one process per (emulated) node on this machine, each told its node name."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class LocalLauncher(Launcher):
    name = "local"
    node_name_env = "HPCRAY_NODE_NAME"

    def command(self, req: LaunchRequest) -> list[str]:
        return list(req.argv)

    def per_process_env(self, req: LaunchRequest) -> list[dict[str, str]]:
        return [{"HPCRAY_NODE_NAME": host} for host in req.hosts]
