"""`hpcray` command line: each command is one call into hpcray.api (or the bootstrap)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from hpcray import api
from hpcray.errors import HpcrayError
from hpcray.sites import list_sites, load_site
from hpcray.state import RunState


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HpcrayError as exc:
            click.echo(f"hpcray: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="hpcray")
def main() -> None:
    """Hybrid HPC + ML workflows on Ray inside batch allocations."""


_site = click.option("--site", help="Site profile name or YAML file (default: the workflow's, "
                     "else 'local').")
_root = click.option("--run-root", type=click.Path(), help="Directory for run directories.")
_account = click.option("--account", "-A", help="Project to charge (overrides the workflow's "
                        "allocation.account).")


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@_site
@_root
@_account
@click.option("--run-dir", type=click.Path(), help="Render for this run directory.")
def script(workflow: str, site: str | None, run_root: str | None, account: str | None,
           run_dir: str | None) -> None:
    """Print the exact job script that submit would hand to the scheduler."""
    click.echo(api.script(workflow, site, run_root=run_root, run_dir=run_dir, account=account),
               nl=False)


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@_site
@_root
@_account
@click.option("--wait/--no-wait", default=None,
              help="Follow the run to its end (default: on for the local site).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait at most.")
@click.option("--verbose", "-v", is_flag=True,
              help="Print the driver's whole output (Ray's, Serve's, Tune's and the workers' "
                   "lines too), not only its own lines and the warnings.")
def submit(workflow: str, site: str | None, run_root: str | None, account: str | None,
           wait: bool | None, timeout: float | None, verbose: bool) -> None:
    """Submit WORKFLOW (sbatch/qsub/bsub/flux batch, or run it here with no scheduler)."""
    sub = api.submit(workflow, site, run_root=run_root, account=account)
    click.echo(f"submitted {sub.run_id}: job {sub.job_id} ({sub.scheduler}, site {sub.site})")
    click.echo(f"run dir: {sub.run_dir}")
    if wait is None:
        wait = sub.scheduler == "local"
    if wait:
        _follow(sub.run_dir, timeout, verbose)


def _follow(run_dir: Path, timeout: float | None, verbose: bool = False) -> None:
    """The live view until the run ends, then the driver's output (quiet: its own lines and
    every warning once, views/console.py; verbose: all of it) and the run's summary."""
    from rich.console import Console

    from hpcray.views.console import quiet_lines
    from hpcray.views.live import RunProgress

    with RunProgress(run_dir, Console(stderr=True)) as shown:
        final = api.wait(run_dir, timeout=timeout, on_change=shown.update)
    if verbose:
        with contextlib.suppress(HpcrayError):
            click.echo(api.logs(run_dir, driver=True), nl=False)
    else:
        for line in quiet_lines(run_dir, final.run_id):
            click.echo(line)
    click.echo(final.summary())
    if not verbose:
        click.echo(f"logs: hpcray logs {final.run_id} [--driver | --service NAME | "
                   "--stage NAME | --ray | --node NAME]")
    if final.state != RunState.COMPLETED:
        sys.exit(1)


@main.command()
@click.argument("ref")
@_root
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, for scripts.")
@click.option("--watch", is_flag=True, help="A live view until the run ends.")
def status(ref: str, run_root: str | None, as_json: bool, watch: bool) -> None:
    """State of a run (job id, run id or run directory): nodes, services, stages."""
    if watch:
        from hpcray.views.live import watch as live

        live(ref, run_root)
        return
    st = api.status(ref, run_root)
    if as_json:
        import json

        click.echo(json.dumps(st.to_dict(), indent=2, default=str))
    else:
        click.echo(st.summary())


@main.command()
@click.argument("ref")
@_root
@click.option("--no-plot", is_flag=True, help="Only the numbers: no PNGs, no report.html.")
def report(ref: str, run_root: str | None, no_plot: bool) -> None:
    """Where a run's time went, from Ray's record of every task and actor: a timeline per
    node and GPU, busy CPU/GPU against what the run held, each replica's BT, the RT split,
    the stages; <run>/report/report.html is one self-contained page with the pipeline's
    figures."""
    import hpcray

    click.echo(hpcray.report(ref, run_root, plot=not no_plot).summary())


@main.command()
@click.argument("ref")
@_root
@click.option("--timeout", type=float, default=120, help="Seconds to wait for teardown.")
def cancel(ref: str, run_root: str | None, timeout: float) -> None:
    """Cancel a run: scheduler cancel, then job-scoped teardown."""
    click.echo(api.cancel(ref, run_root, wait_s=timeout).summary())


@main.command()
@click.argument("ref")
@_root
@click.option("--node", help="This node's agent and Ray start log (with --ray: that node's "
              "kept Ray session logs).")
@click.option("--service", help="This service's replicas: Ray's session logs of them.")
@click.option("--stage", help="This stage's task output and attempt records.")
@click.option("--driver", is_flag=True, help="The driver's whole output.")
@click.option("--ray", "ray_", is_flag=True,
              help="Ray's, Serve's, Tune's and the workers' lines the console held back, and "
                   "where each node's Ray session logs are kept.")
def logs(ref: str, run_root: str | None, node: str | None, service: str | None,
         stage: str | None, driver: bool, ray_: bool) -> None:
    """Print a run's job output, or the part of its logs asked for."""
    click.echo(api.logs(ref, node, run_root, service=service, stage=stage, driver=driver,
                        ray=ray_), nl=False)


@main.command()
@click.argument("workflow", type=click.Path(exists=True, dir_okay=False))
@_site
def validate(workflow: str, site: str | None) -> None:
    """Check a workflow file against a site without submitting."""
    api.script(workflow, site)
    click.echo(f"{workflow}: ok")


@main.command()
@click.argument("name", required=False)
def sites(name: str | None) -> None:
    """List known site profiles; with NAME, that site's queues and their limits."""
    if name:
        click.echo(api.site_queues(name), nl=False)
        return
    for known in list_sites():
        profile = load_site(known)
        click.echo(f"{known:12} {profile.scheduler:6} {profile.description}")


@main.command()
@click.argument("ref")
@_root
@click.option("--nodes", "-N", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes of the worker job.")
@_site
@click.option("--partition", "-p", help="Partition or queue (default: the run's).")
@click.option("--walltime", "-t", help="Walltime of the worker job (default: the run's).")
def grow(ref: str, run_root: str | None, nodes: int, site: str | None, partition: str | None,
         walltime: str | None) -> None:
    """Add nodes to a running run: a worker-only batch job whose nodes join its cluster."""
    click.echo(api.grow(ref, nodes, run_root=run_root, site=site, partition=partition,
                        walltime=walltime).line())


@main.command()
@click.argument("ref")
@_root
@click.option("--job", "job", help="The worker job to release (its job id or tag, w1, ...).")
@click.option("--nodes", "-N", type=click.IntRange(min=1), help="Release worker jobs, newest "
              "first, until at least this many nodes are released.")
@click.option("--drain-timeout", type=float, default=300, show_default=True,
              help="Seconds the drain may take; what still runs then runs again elsewhere.")
@click.option("--wait/--no-wait", default=True, help="Wait until their nodes have left.")
@click.option("--timeout", type=float, default=600, help="Seconds to wait at most.")
def shrink(ref: str, run_root: str | None, job: str | None, nodes: int | None,
           drain_timeout: float, wait: bool, timeout: float) -> None:
    """Release worker jobs: their nodes take no new work, what runs there finishes, replicas
    there move to other nodes first, then the job ends."""
    for released in api.shrink(ref, job=job, nodes=nodes, run_root=run_root, wait=wait,
                               drain_timeout=drain_timeout, timeout=timeout):
        click.echo(released.line())


@main.command(hidden=True)
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--job", "job", default="main", help="Which of the run's jobs this is (its tag in "
              "run.json's jobs): main, a worker job (w1, ...) or a relay's successor (r1, ...).")
def up(run_dir: str, job: str) -> None:
    """Inside the allocation: start Ray on all nodes, run the driver, tear down; a worker
    job's: join the run's cluster until released."""
    from hpcray.bootstrap.up import main as up_main

    sys.exit(up_main(run_dir, job))


@main.command(hidden=True)
@click.option("--run-dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--node", default=None, help="Node name (default: from the launcher's env).")
@click.option("--job", "job", default="main", help="The job whose plan names this node.")
def node(run_dir: str, node: str | None, job: str) -> None:
    """One node's agent: ray start with the job's ports, temp dir and token."""
    from hpcray.bootstrap.node import main as node_main

    sys.exit(node_main(run_dir, node, job))


if __name__ == "__main__":
    main()
