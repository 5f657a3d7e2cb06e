"""Shared fixtures. Integration tests start real processes; each has a timeout and cleans up."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

# the container fixtures (python_rootfs, podman, charliecloud): one image and one podman store
# for the whole session
pytest_plugins = ["tests.fixtures.containers"]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
# Small real data files (VCF, GTF, GMT, microscopy, QA) beside the repository, read in place.
SHARED_DATA = Path(os.environ.get("HPCRAY_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "tests" / "slurm"))


def has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


needs_gpu = pytest.mark.skipif(not has_nvidia_gpu(), reason="no NVIDIA GPU on this machine "
                               "(checked on the lent GPU by benchmarks/gpu_check.sh)")


@pytest.fixture(autouse=True)
def _isolated_sites(monkeypatch):
    """Test site profiles (testslurm, an LSF and a Flux site) next to the built-in ones."""
    monkeypatch.setenv("HPCRAY_SITES_PATH", str(FIXTURES / "sites"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(FIXTURES / "no-user-config"))


@pytest.fixture
def run_root(tmp_path):
    return tmp_path / "runs"


def ray_processes(scope: str) -> list[psutil.Process]:
    """Processes of one job (cluster id) or node, found by hpcray's teardown marker."""
    from hpcray.runtime.teardown import marked_processes

    return [p for p in marked_processes(scope) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


ONE_NODE = ("allocation: {nodes: 1, walltime: 10m}\n"
            "ray: {object_store_memory: 100000000, teardown_grace: 5}\n")


def submit_beside(fixture_dir: str, stem: str, text: str, run_root, **submit_options):
    """Submit a workflow whose file sits in tests/fixtures/<fixture_dir> (its directory holds
    the user code it imports); the file is removed once submitted."""
    import hpcray

    path = FIXTURES / fixture_dir / f"{stem}.yaml"
    path.write_text(text)
    try:
        return hpcray.submit(path, run_root=run_root, **submit_options)
    finally:
        path.unlink()


def run_beside(fixture_dir: str, stem: str, text: str, run_root, timeout: float = 240,
               **submit_options):
    """submit_beside, then wait for the run's end and check that no process of it is left."""
    import hpcray

    sub = submit_beside(fixture_dir, stem, text, run_root, **submit_options)
    st = hpcray.wait(sub.run_dir, timeout=timeout)
    assert_nothing_left_of(sub.run_dir)
    return sub, st


@contextlib.contextmanager
def up_until_cancelled(path: Path, run_root: Path, ready_s: float = 240):
    """A run with no driver, up until the block ends: submitted, waited for until its
    services are ready (it must be running then), cancelled afterwards with no process of
    it left. The workflow file is removed in any case. Yields the run directory."""
    import hpcray
    from hpcray.rundir import read_json

    sub = None
    try:
        sub = hpcray.submit(path, run_root=run_root)
        assert wait_until(lambda: "services_ready" in hpcray.status(sub.run_dir).times
                          or hpcray.status(sub.run_dir).finished, ready_s), \
            hpcray.logs(sub.run_dir)
        assert hpcray.status(sub.run_dir).state == "running", hpcray.logs(sub.run_dir)
        yield sub.run_dir
    finally:
        path.unlink(missing_ok=True)
        if sub is not None:
            cluster = read_json(sub.run_dir / "run.json").get("cluster_id")
            hpcray.cancel(sub.run_dir, wait_s=120)
            assert wait_until(lambda: not ray_processes(cluster), 30), "processes left behind"


def run_to_completion(path: Path, run_root: Path, timeout: float = 540):
    """Submit a workflow file and wait for its end, which must be `completed` with no process
    of it left; returns the submission and the final status."""
    import hpcray

    sub = hpcray.submit(path, run_root=run_root)
    st = hpcray.wait(sub.run_dir, timeout=timeout)
    assert st.state == "completed", hpcray.logs(sub.run_dir)
    assert_nothing_left_of(sub.run_dir)
    return sub, st


def finish_told(run_dir: Path, marker: str, timeout: float = 120):
    """Tell a driver that waits for <run>/<marker> to end (tests/fixtures drivers), then wait
    for the run's end; returns its final status."""
    import hpcray

    (run_dir / marker).write_text("")
    return hpcray.wait(run_dir, timeout=timeout)


def assert_nothing_left_of(run_dir: Path) -> None:
    """No process of the run is left (found by hpcray's teardown marker) within 30 s."""
    from hpcray.rundir import read_json

    cluster = read_json(run_dir / "run.json").get("cluster_id")
    assert wait_until(lambda: not ray_processes(cluster), 30), "processes left behind"


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real 2-node Slurm (slurm-wlm + munge) for this test session, each node in its own
    network namespace on its own address (`cluster.addresses`); where namespaces cannot be
    made (`cluster.separate_addresses` False), both on 127.0.0.1, and the tests submit with a
    copy of the testslurm profile naming lo (HPCRAY_TEST_SLURM_SITE, a path) instead of hsn0.
    HPCRAY_TEST_SLURM_NETWORK=shared asks for that layout here too."""
    import testcluster

    missing = testcluster.missing_binaries()
    if missing:
        pytest.skip(reason=f"slurm-wlm/munge not installed ({', '.join(missing)}); "
                    "`bash .ci/run` installs them")
    if os.geteuid() != 0:
        pytest.skip(reason="the test Slurm runs its daemons as root")
    root = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    cluster = None
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "HPCRAY_TEST_SLURM_SITE")}
    try:
        with contextlib.suppress(Exception):  # namespaces and bridges a killed session left
            testcluster.clean_leftovers()
        cluster = testcluster.start(root, nodes=2, cpus=2, gpus=1,
                                    network=os.environ.get("HPCRAY_TEST_SLURM_NETWORK", "auto"))
        os.environ["SLURM_CONF"] = str(cluster.conf)
        if not cluster.separate_addresses:
            profile = root / "sites" / "testslurm.yaml"
            profile.parent.mkdir()
            text = (FIXTURES / "sites" / "testslurm.yaml").read_text()
            assert "network_interface: hsn0" in text, "the testslurm profile changed its form"
            profile.write_text(text.replace("network_interface: hsn0", "network_interface: lo"))
            os.environ["HPCRAY_TEST_SLURM_SITE"] = str(profile)
        yield cluster
    finally:
        testcluster.stop(root)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)
