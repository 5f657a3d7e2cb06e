"""The queue a job goes to, chosen from the site's queue table before anything is submitted.

A job that fits no queue is otherwise only found out at sbatch/qsub time, or held in the
queue forever; here it fails with the limits it breaks and the queues that would take it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcray.errors import ResourceError
from hpcray.sites.profile import QueueLimits, SiteProfile
from hpcray.spec.walltime import hhmmss


@dataclass(frozen=True)
class QueueChoice:
    """What the job script names: a partition or PBS queue, a QOS, or neither."""

    partition: str | None = None
    qos: str | None = None
    reason: str = ""


def _kind(row: QueueLimits) -> str:
    """Partitions and PBS queues are one choice, a QOS another: a job names one of each."""
    return "qos" if row.option == "qos" else "partition"


def _flag(site: SiteProfile, kind: str) -> str:
    if kind == "qos":
        return "allocation.qos"
    return "allocation.queue" if site.scheduler == "pbs" else "allocation.partition"


def _summary(rows: list[QueueLimits], walltime: int = 0) -> str:
    """'debug 1-2 nodes up to 01:00:00; prod 10-24 nodes up to 03:00:00, 25-99 ...'; a
    minimum walltime only where `walltime` is below it."""
    by_name: dict[str, list[str]] = {}
    for row in rows:
        by_name.setdefault(row.name, []).append(
            row.limits(minimum=walltime < (row.min_walltime or 0)))
    return "; ".join(f"{name} {', '.join(limits)}" for name, limits in by_name.items())


def _size(nodes: int, walltime: int) -> str:
    return f"{nodes} node{'s' if nodes > 1 else ''} for {hhmmss(walltime)}"


def _field(rows: list[QueueLimits], nodes: int) -> str:
    """The workflow field to blame: the walltime when some row holds the node count."""
    return "allocation.walltime" if any(r.holds(nodes) for r in rows) else "allocation.nodes"


def _outside(site: SiteProfile, kind: str, named: list[QueueLimits], nodes: int,
             walltime: int) -> ResourceError:
    others = [r for r in site.queues if _kind(r) == kind and r.name != named[0].name
              and r.takes(nodes, walltime)]
    hint = (f"; queues that take it: {_summary(others, walltime)}" if others else
            "; no other queue of the site takes it")
    return ResourceError(
        f"{_size(nodes, walltime)} is outside the limits of {_flag(site, kind)} "
        f"{named[0].name} on site '{site.name}' ({_summary(named, walltime)}){hint}",
        field=_field(named, nodes))


def _none_fits(site: SiteProfile, kind: str, nodes: int, walltime: int) -> ResourceError:
    rows = [r for r in site.queues if _kind(r) == kind]
    choosable = [r for r in rows if r.choose]
    message = (f"no queue hpcray chooses on site '{site.name}' takes {_size(nodes, walltime)}: "
               f"{_summary(choosable, walltime)}")
    explicit = [r for r in rows if not r.choose and r.takes(nodes, walltime)]
    if explicit:
        message += "; named explicitly, " + "; ".join(
            f"{_flag(site, kind)}: {r.name} takes it ({r.limits()}"
            f"{', ' + r.note if r.note else ''})" for r in explicit)
    if site.queues_source:
        message += f" (limits: {site.queues_source})"
    return ResourceError(message, field=_field(choosable, nodes))


_QUEUE_OPTIONS = {
    "slurm": re.compile(r"^(?:--(?:partition|qos)\b|-[pq](?:\s|$|\S))"),
    "pbs": re.compile(r"^-q\b"),
}


def check_queue_directives(site: SiteProfile, directives: list[str]) -> None:
    """A queue named in a raw directive would bypass the table and, coming after the one
    hpcray writes, win: with a table, queues are named in allocation.partition/qos only."""
    pattern = _QUEUE_OPTIONS.get(site.scheduler)
    if not site.queues or pattern is None:
        return
    for directive in directives:
        if pattern.match(directive.strip()):
            raise ResourceError(
                f"'{directive}' names a queue outside the check against site '{site.name}'s "
                f"queue table; use allocation.partition (queue) or allocation.qos instead",
                field="allocation.directives")


def choose_queue(site: SiteProfile, nodes: int, walltime: int, partition: str | None = None,
                 qos: str | None = None) -> QueueChoice:
    """For partitions (PBS queues) and for QOSs apart: a named one is checked against its
    rows; otherwise, where the table has rows hpcray may choose, the first that takes
    `nodes` for `walltime`. Raises ResourceError (with `field`) when none does. A named
    queue the table does not list passes unchecked: tables lag behind sites."""
    if not site.queues:
        return QueueChoice(partition or site.default_partition, qos,
                           reason="the site has no queue table")
    chosen = {"partition": partition, "qos": qos}
    reasons = []
    for kind, named in chosen.items():
        rows = [r for r in site.queues if _kind(r) == kind]
        if named:
            mine = [r for r in rows if r.name == named]
            other = "partition" if kind == "qos" else "qos"
            if not mine and any(r.name == named and _kind(r) == other for r in site.queues):
                raise ResourceError(
                    f"{named} is a {'QOS' if other == 'qos' else 'queue'} on site "
                    f"'{site.name}', not a {'QOS' if kind == 'qos' else 'partition'}: name it "
                    f"as {_flag(site, other)}", field=_flag(site, kind))
            if mine and not any(r.takes(nodes, walltime) for r in mine):
                raise _outside(site, kind, mine, nodes, walltime)
            reasons.append(f"{named}: named" + ("" if mine else ", not in the queue table"))
        elif any(r.choose for r in rows):
            row = next((r for r in rows if r.choose and r.takes(nodes, walltime)), None)
            if row is None:
                raise _none_fits(site, kind, nodes, walltime)
            chosen[kind] = row.name
            reasons.append(f"{row.name}: the first that takes {_size(nodes, walltime)}")
    return QueueChoice(chosen["partition"], chosen["qos"], "; ".join(reasons))


def queue_table(site: SiteProfile) -> str:
    """The site's queue table in Markdown, as docs/sites/ and `hpcray sites NAME` show it."""
    if not site.queues:
        return f"Site '{site.name}' has no queue table: every job goes to " \
               f"{site.default_partition or 'the scheduler default'}.\n"
    flag = {"partition": "--partition", "qos": "--qos", "queue": "-q"}
    lines = ["| queue | named with | nodes | walltime | limits per user or project "
             "| hpcray chooses it |", "|---|---|---|---|---|---|"]
    for row in site.queues:
        nodes = (f"{row.min_nodes}-{row.max_nodes}" if row.max_nodes is not None
                 else f"{row.min_nodes}+")
        walltime = hhmmss(row.max_walltime)
        if row.min_walltime:
            walltime = f"{hhmmss(row.min_walltime)} - {walltime}"
        chooses = "yes" if row.choose else f"only when named ({row.note})" if row.note else \
            "only when named"
        if row.choose and row.note:
            chooses += f" ({row.note})"
        lines.append(f"| {row.name} | `{flag[row.option]} {row.name}` | {nodes} | {walltime} | "
                     f"{row.per_user or '-'} | {chooses} |")
    lines.append("")
    lines.append(f"Source: {site.queues_source or 'the site profile'}. hpcray takes the first row "
                 "it may choose that holds the job's nodes and walltime.")
    return "\n".join(lines) + "\n"
