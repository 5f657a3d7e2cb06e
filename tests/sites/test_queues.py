"""The queue a job goes to (hpcray/sites/queues.py), on small tables built for each rule."""

from __future__ import annotations

import pytest

from hpcray.errors import ResourceError, SpecError
from hpcray.sites.profile import SiteProfile
from hpcray.sites.queues import choose_queue

H = 3600


def site(*rows: dict, scheduler: str = "slurm", **extra) -> SiteProfile:
    return SiteProfile.model_validate({
        "name": "t", "scheduler": scheduler, "launcher": "srun", "cpus_per_node": 8,
        "queues": list(rows), "queues_source": "https://example.org/policy", **extra})


BINNED = site({"name": "batch", "max_nodes": 10, "max_walltime": "02:00:00"},
              {"name": "batch", "min_nodes": 11, "max_nodes": 100, "max_walltime": "12:00:00"},
              {"name": "long", "max_nodes": 4, "max_walltime": "48:00:00"},
              {"name": "debug", "option": "qos", "max_walltime": "01:00:00", "choose": False},
              {"name": "pre", "max_nodes": 50, "max_walltime": "72:00:00", "choose": False,
               "note": "may be preempted"})


@pytest.mark.parametrize(("nodes", "hours", "partition"), [
    (1, 2, "batch"), (10, 2, "batch"), (11, 12, "batch"), (100, 12, "batch"),
    (4, 3, "long"), (4, 48, "long"),
])
def test_the_first_row_hpcray_may_choose_that_takes_the_job(nodes, hours, partition):
    choice = choose_queue(BINNED, nodes, hours * H)
    assert (choice.partition, choice.qos) == (partition, None)


@pytest.mark.parametrize(("nodes", "hours", "field"), [
    (5, 3, "allocation.walltime"),    # batch holds 5 nodes, but for 2 h
    (101, 1, "allocation.nodes"),     # no row hpcray chooses holds 101 nodes
    (100, 13, "allocation.walltime"),
])
def test_no_row_takes_it(nodes, hours, field):
    with pytest.raises(ResourceError) as info:
        choose_queue(BINNED, nodes, hours * H)
    assert info.value.field == field
    assert "batch 1-10 nodes up to 02:00:00, 11-100 nodes up to 12:00:00; long 1-4 nodes" \
        in info.value.reason
    assert "https://example.org/policy" in info.value.reason


def test_a_row_hpcray_does_not_choose_is_offered_when_it_would_take_the_job():
    with pytest.raises(ResourceError) as info:
        choose_queue(BINNED, 20, 24 * H)
    assert "allocation.partition: pre takes it (1-50 nodes up to 72:00:00, may be " \
           "preempted)" in info.value.reason
    assert choose_queue(BINNED, 20, 24 * H, partition="pre").partition == "pre"


def test_partition_and_qos_are_checked_each_against_its_own_rows():
    # the QOS's 1 h limit holds even though the named partition takes the job
    with pytest.raises(ResourceError) as info:
        choose_queue(BINNED, 20, 5 * H, partition="batch", qos="debug")
    assert info.value.field == "allocation.walltime"
    assert "outside the limits of allocation.qos debug" in info.value.reason
    assert "long" not in info.value.reason  # partitions are not offered for a QOS
    with pytest.raises(ResourceError, match="allocation.partition long"):
        choose_queue(BINNED, 20, 1 * H, partition="long", qos="debug")
    choice = choose_queue(BINNED, 2, 1 * H, qos="debug")  # the partition is still chosen
    assert (choice.partition, choice.qos) == ("batch", "debug")


def test_a_qos_table_names_a_qos_even_when_a_partition_is_named():
    qos_only = site({"name": "regular", "option": "qos", "max_walltime": "48:00:00"},
                    {"name": "debug", "option": "qos", "max_nodes": 8,
                     "max_walltime": "00:30:00", "choose": False})
    choice = choose_queue(qos_only, 2, 4 * H, partition="gpu_ss11")
    assert (choice.partition, choice.qos) == ("gpu_ss11", "regular")
    # a row without a node limit holds any count
    assert choose_queue(qos_only, 5000, 4 * H).qos == "regular"


def test_minimum_walltime_boundary():
    pbs = site({"name": "debug", "option": "queue", "max_nodes": 2, "max_walltime": "01:00:00",
                "min_walltime": "00:05:00"}, scheduler="pbs")
    assert choose_queue(pbs, 1, 300).partition == "debug"
    with pytest.raises(ResourceError) as info:
        choose_queue(pbs, 1, 299)
    assert "(at least 00:05:00)" in info.value.reason
    with pytest.raises(ResourceError, match="allocation.queue debug"):
        choose_queue(pbs, 3, 600, partition="debug")


def test_a_named_queue_the_table_does_not_list_passes():
    choice = choose_queue(BINNED, 500, 100 * H, partition="gpuH200x8")
    assert choice.partition == "gpuH200x8" and "not in the queue table" in choice.reason


def test_without_a_table_the_default_partition():
    plain = SiteProfile.model_validate({"name": "p", "scheduler": "slurm", "launcher": "srun",
                                        "cpus_per_node": 8, "default_partition": "gpu"})
    assert choose_queue(plain, 1000, 1000 * H).partition == "gpu"


@pytest.mark.parametrize(("extra", "message"), [
    ({"default_partition": "gpu"}, "default_partition is not used with a queue table"),
    ({"default_memory_per_cpu_mb": 1000}, "needs memory_per_node_gb"),
    ({"address_source": "interface"}, "network_interface is not set"),
])
def test_profiles_that_contradict_themselves_are_refused(extra, message, tmp_path):
    from hpcray.sites import load_site_file

    path = tmp_path / "mysite.yaml"
    path.write_text("scheduler: slurm\nlauncher: srun\ncpus_per_node: 8\n"
                    "queues: [{name: gpu, max_walltime: '24:00:00'}]\n"
                    + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    with pytest.raises(SpecError, match=message):
        load_site_file(path)
