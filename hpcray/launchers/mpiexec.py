"""mpiexec (Cray PALS on Polaris and Aurora): `per_node` ranks per host, no CPU binding."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class Mpiexec(Launcher):
    name = "mpiexec"

    def command(self, req: LaunchRequest) -> list[str]:
        return ["mpiexec", "-n", str(req.ntasks), "--ppn", str(req.per_node),
                "--hosts", ",".join(req.hosts), "--cpu-bind", "none", *req.argv]
