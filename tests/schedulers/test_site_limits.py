"""Job scripts the five machines accept: for each site and size, the script (golden file) or
an error before submission that names the field, its line and the limits.

The queue a script names comes from the site profile's queue table (tests/sites/
test_queues.py checks the choice rules on small tables); here the whole script is pinned
for sizes across every queue boundary the issue names: 1 node 30 min, 4 nodes 2 h, 64
nodes 6 h, 300 nodes 12 h. UPDATE_GOLDEN=1 rewrites the files; the hand-written table in
test_the_golden_outcomes_are_the_documented_choices still guards the choices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcray import api
from hpcray.errors import ResourceError
from hpcray.sites import load_site

GOLDEN = Path(__file__).parent / "golden" / "sizes"
RUN_DIR = Path("/scratch/proj/hpcray-runs/demo-20261126-120000-abcd")
SIZES = [(1, "00:30:00"), (4, "02:00:00"), (64, "06:00:00"), (300, "12:00:00")]
SITES = ["frontier", "perlmutter", "delta", "polaris", "aurora"]


def workflow_file(tmp_path: Path, site: str, nodes: int, walltime: str,
                  extra: str = "") -> Path:
    profile = load_site(site)
    account = "bio123" + (profile.gpu_account_suffix or "")
    path = tmp_path / "demo.yaml"
    path.write_text(f"name: demo\nallocation:\n  nodes: {nodes}\n  walltime: {walltime}\n"
                    f"  account: {account}\n  python: /sw/envs/bio/bin/python\n{extra}")
    return path


def outcome(tmp_path: Path, site: str, nodes: int, walltime: str, extra: str = "") -> str:
    path = workflow_file(tmp_path, site, nodes, walltime, extra)
    try:
        return api.script(path, site, run_dir=RUN_DIR)
    except ResourceError as exc:
        return "error: " + str(exc).replace(str(tmp_path), "<dir>") + "\n"


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(("nodes", "walltime"), SIZES)
def test_each_size_gets_the_queue_that_takes_it_or_a_located_error(site, nodes, walltime,
                                                                   tmp_path):
    text = outcome(tmp_path, site, nodes, walltime)
    golden = GOLDEN / f"{site}-{nodes}n-{walltime[:2]}h.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_the_golden_outcomes_are_the_documented_choices():
    """The queue each golden file names, read back, against the sites' published tables."""
    def chosen(site: str, nodes: int, hours: str) -> str:
        text = (GOLDEN / f"{site}-{nodes}n-{hours}h.txt").read_text()
        if text.startswith("error:"):
            return "error"
        for line in text.splitlines():
            for prefix in ("#SBATCH --partition=", "#SBATCH --qos=", "#PBS -q "):
                if line.startswith(prefix):
                    return line.removeprefix(prefix)
        return "none"

    table = {(s, n, w[:2]): chosen(s, n, w[:2]) for s in SITES for n, w in SIZES}
    assert table == {
        # Frontier: batch's bins (2 h up to 91 nodes, 12 h from 184); extended for 64 x 6 h
        ("frontier", 1, "00"): "batch", ("frontier", 4, "02"): "batch",
        ("frontier", 64, "06"): "extended", ("frontier", 300, "12"): "batch",
        ("perlmutter", 1, "00"): "regular", ("perlmutter", 4, "02"): "regular",
        ("perlmutter", 64, "06"): "regular", ("perlmutter", 300, "12"): "regular",
        ("delta", 1, "00"): "gpuA100x4", ("delta", 4, "02"): "gpuA100x4",
        ("delta", 64, "06"): "gpuA100x4", ("delta", 300, "12"): "gpuA100x4",
        # Polaris: debug for 1-2 nodes and 1 h, capacity up to 4 nodes, prod from 10
        ("polaris", 1, "00"): "debug", ("polaris", 4, "02"): "capacity",
        ("polaris", 64, "06"): "prod", ("polaris", 300, "12"): "prod",
        # Aurora: below 256 nodes only debug-scaling (1 h) and capacity (16 nodes)
        ("aurora", 1, "00"): "debug", ("aurora", 4, "02"): "capacity",
        ("aurora", 64, "06"): "error", ("aurora", 300, "12"): "prod",
    }


def test_a_size_no_queue_takes_names_the_line_the_limits_and_the_source(tmp_path):
    text = outcome(tmp_path, "aurora", 64, "06:00:00")
    assert text.startswith("error: <dir>/demo.yaml:4: allocation.walltime: ")
    assert "debug-scaling 2-256 nodes up to 01:00:00" in text
    assert "https://docs.alcf.anl.gov/aurora/running-jobs-aurora/" in text


def test_a_named_queue_outside_its_limits_is_refused_with_the_limit(tmp_path):
    text = outcome(tmp_path, "polaris", 4, "02:00:00", "  queue: debug\n")
    assert text.startswith("error: <dir>/demo.yaml:3: allocation.nodes: 4 nodes for "
                           "02:00:00 is outside the limits of allocation.queue debug")
    assert "debug 1-2 nodes up to 01:00:00" in text
    text = outcome(tmp_path, "polaris", 2, "02:00:00", "  queue: debug\n")
    assert text.startswith("error: <dir>/demo.yaml:4: allocation.walltime: 2 nodes for ")
    assert "queues that take it: capacity 1-4 nodes up to 168:00:00" in text
    text = outcome(tmp_path, "frontier", 300, "12:00:00", "  partition: extended\n")
    assert "allocation.nodes: 300 nodes" in text and "extended 1-64 nodes" in text


def test_a_queue_hpcray_does_not_choose_is_taken_when_named(tmp_path):
    text = outcome(tmp_path, "polaris", 8, "12:00:00")
    assert "allocation.queue: preemptable takes it (1-10 nodes up to 72:00:00, jobs may be " \
           "preempted)" in text
    text = outcome(tmp_path, "polaris", 8, "12:00:00", "  queue: preemptable\n")
    assert "#PBS -q preemptable" in text
    # Frontier's debug QOS runs in the batch partition, which is still chosen
    text = outcome(tmp_path, "frontier", 2, "01:00:00", "  qos: debug\n")
    assert "#SBATCH --partition=batch" in text and "#SBATCH --qos=debug" in text


def test_alcf_queues_take_no_job_under_five_minutes(tmp_path):
    text = outcome(tmp_path, "polaris", 1, "00:03:00")
    assert "debug 1-2 nodes up to 01:00:00 (at least 00:05:00)" in text


def test_a_queue_the_table_does_not_list_passes_unchecked(tmp_path):
    """Sites add queues faster than tables follow: a named one goes to the scheduler, within
    the site's longest walltime."""
    text = outcome(tmp_path, "delta", 2, "04:00:00", "  partition: gpuA40x4\n")
    assert "#SBATCH --partition=gpuA40x4" in text
    text = outcome(tmp_path, "delta", 2, "200:00:00", "  partition: gpuA40x4\n")
    assert "allocation.walltime: 200:00:00 exceeds the limit of site 'delta' (48:00:00)" in text


def test_a_queue_in_a_raw_directive_is_refused(tmp_path):
    """It would come after the one hpcray writes and win, unchecked (Perlmutter's debug QOS
    takes 30 minutes)."""
    for site, directive in [("perlmutter", "--qos=debug"), ("frontier", "-p extended"),
                            ("polaris", "-q preemptable")]:
        text = outcome(tmp_path, site, 2, "00:30:00", f"  directives: ['{directive}']\n")
        assert text.startswith("error: <dir>/demo.yaml:7: allocation.directives: "
                               f"'{directive}' names a queue outside the check"), text


def test_a_qos_named_as_a_partition_is_refused(tmp_path):
    text = outcome(tmp_path, "perlmutter", 2, "00:30:00", "  partition: debug\n")
    assert "allocation.partition: debug is a QOS on site 'perlmutter', not a partition: " \
           "name it as allocation.qos" in text


@pytest.mark.parametrize(("extra", "directives"), [
    ("", ["--cpus-per-task=64", "--mem=208G", "--gpus-per-node=4"]),
    ("  cpus_per_node: 16\n  gpus_per_node: 1\n",
     ["--cpus-per-task=16", "--mem=52G", "--gpus-per-node=1"]),
    ("  exclusive: true\n", ["--exclusive", "--mem=0", "--gpus-per-node=4"]),
])
def test_delta_memory_is_always_requested(extra, directives, tmp_path):
    """Delta gives 1000 MB per core unless --mem is asked: a whole node's share of the
    guide's 208 GB, a quarter for a quarter of the node, all of it with --exclusive."""
    text = outcome(tmp_path, "delta", 2, "02:00:00", extra)
    got = [line.removeprefix("#SBATCH ") for line in text.splitlines()
           if line.startswith(("#SBATCH --cpus", "#SBATCH --mem", "#SBATCH --gpus",
                               "#SBATCH --exclusive"))]
    assert got == directives


def test_delta_memory_covers_what_the_services_reserve(tmp_path):
    services = ("services:\n  - name: big\n    deployment: tests.x:Y\n    replicas: 2\n"
                "    resources: {cpus: 1, gpus: 0, memory: 64000000000}\n")
    text = outcome(tmp_path, "delta", 1, "02:00:00",
                   "  cpus_per_node: 4\n  gpus_per_node: 0\n" + services)
    # 2 x 59.6 GiB out of the 70 % the object store leaves, + Ray's 8 GB: above 4/64 of 208
    assert "#SBATCH --mem=179G" in text
    text = outcome(tmp_path, "delta", 1, "02:00:00",
                   "  cpus_per_node: 4\n  gpus_per_node: 0\n" + services.replace("2\n", "4\n"))
    assert text.startswith("error: ") and "208 GB a job may ask for" in text
    # one replica's memory is on one node: two nodes do not halve it
    one = services.replace("replicas: 2", "replicas: 1").replace("64000000000", "300000000000")
    text = outcome(tmp_path, "delta", 2, "02:00:00",
                   "  cpus_per_node: 4\n  gpus_per_node: 0\n" + one)
    assert text.startswith("error: ") and "at least 279 GB on one node" in text


def refusal(tmp_path: Path, site: str, nodes: int, old: str = "", new: str = "",
            run_dir: Path = RUN_DIR) -> ResourceError:
    """The error a one-hour workflow gets, with `old` replaced by `new` in its file."""
    path = workflow_file(tmp_path, site, nodes, "01:00:00")
    path.write_text(path.read_text().replace(old, new) if old else path.read_text())
    with pytest.raises(ResourceError) as info:
        api.script(path, site, run_dir=run_dir)
    return info.value


def test_a_delta_gpu_job_needs_the_gpu_account(tmp_path):
    error = refusal(tmp_path, "delta", 1, "bio123-delta-gpu", "bio123-delta-cpu")
    assert error.field == "allocation.account" and error.line == 5
    assert "'bio123-delta-cpu' does not end in '-delta-gpu'" in str(error)


def test_frontier_nvme_is_asked_for_when_ray_spills_there(tmp_path):
    text = outcome(tmp_path, "frontier", 2, "01:00:00",
                   "  directives: [-C nvme2]\nray:\n  spill_dir: /mnt/bb/$USER/spill\n")
    constraints = [ln for ln in text.splitlines() if "constraint" in ln or ln.startswith(
        "#SBATCH -C")]
    assert constraints == ["#SBATCH --constraint=nvme&nvme2"]
    text = outcome(tmp_path, "frontier", 2, "01:00:00")
    assert "nvme" not in text
    text = outcome(tmp_path, "frontier", 2, "01:00:00", "ray:\n  temp_root: /mnt/bb\n")
    assert "#SBATCH --constraint=nvme" in text
    text = outcome(tmp_path, "frontier", 2, "01:00:00",
                   '  directives: [\'-C "hbm"\']\nray:\n  spill_dir: /mnt/bb/$USER\n')
    assert "#SBATCH --constraint=nvme&hbm" in text


def test_a_run_directory_under_tmp_is_refused_for_two_nodes(tmp_path, caplog):
    error = refusal(tmp_path, "frontier", 2, run_dir=Path("/tmp/hpcray-runs/demo"))
    assert error.field == "run_root"
    assert "/tmp/hpcray-runs/demo is under /tmp, which is node-local" in str(error)
    path = workflow_file(tmp_path, "frontier", 1, "01:00:00")
    assert api.script(path, "frontier", run_dir=Path("/tmp/hpcray-runs/demo"))
    assert "one node: allowed" in caplog.text


def test_a_job_python_in_a_node_local_venv_is_refused_for_two_nodes(tmp_path, monkeypatch):
    error = refusal(tmp_path, "polaris", 2, "/sw/envs/bio/bin/python", "/dev/shm/venv/bin/python")
    assert error.field == "allocation.python" and error.line == 6
    # a bare name is looked up on each node's PATH, wherever the submitter stands
    monkeypatch.chdir(tmp_path)
    path = workflow_file(tmp_path, "polaris", 2, "00:30:00")
    path.write_text(path.read_text().replace("/sw/envs/bio/bin/python", "python3"))
    assert "#PBS -q debug" in api.script(path, "polaris", run_dir=RUN_DIR)


def test_a_value_given_on_the_command_line_is_blamed_as_such(tmp_path, monkeypatch):
    path = workflow_file(tmp_path, "delta", 1, "00:30:00")
    with pytest.raises(ResourceError) as info:
        api.script(path, "delta", run_dir=RUN_DIR, account="bbka-delta-cpu")
    assert str(info.value).startswith("allocation.account: 'bbka-delta-cpu' does not end in")
    assert str(info.value).endswith("(given as --account)")
    path = workflow_file(tmp_path, "frontier", 2, "00:30:00")
    with pytest.raises(ResourceError) as info:
        api.script(path, "frontier", run_root="/tmp/runs")
    assert str(info.value).startswith("run_root: the run directory /tmp/runs/demo-")
    assert str(info.value).endswith("(given as --run-root)")
    # no allocation.python: the interpreter running hpcray is the job's, and named as such
    path.write_text(path.read_text().replace("  python: /sw/envs/bio/bin/python\n", ""))
    monkeypatch.setattr("hpcray.api.sys.executable", "/tmp/venv/bin/python")
    with pytest.raises(ResourceError) as info:
        api.script(path, "frontier", run_dir=RUN_DIR)
    assert str(info.value).startswith("allocation.python: the job's Python /tmp/venv/bin/")
    assert "(given as the Python that runs hpcray here" in str(info.value)
