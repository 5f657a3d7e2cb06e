"""mpiexec (Cray PALS on Polaris and Aurora): one rank per host, no CPU binding."""

from __future__ import annotations

from hpcray.launchers.base import Launcher, LaunchRequest


class Mpiexec(Launcher):
    name = "mpiexec"

    def command(self, req: LaunchRequest) -> list[str]:
        return ["mpiexec", "-n", str(len(req.hosts)), "--ppn", "1",
                "--hosts", ",".join(req.hosts), "--cpu-bind", "none", *req.argv]
