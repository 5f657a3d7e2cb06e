"""Every environment variable hpcray itself sets or reads, in one place: the contract between
the submitting side, `hpcray up`, the node agents, and the processes Ray starts (drivers,
replicas, tasks). What a batch system exports for its jobs (SLURM_*, PBS_*, LSB_*, FLUX_*,
and the node names SLURMD_NODENAME / FLUX_NODE_NAME the node agent reads) belongs to that
system and stays beside the code that reads it; so does GPU visibility (CUDA_VISIBLE_DEVICES
and the AMD and Intel ones, runtime/gpus.py and the GPU count in api.py)."""

from __future__ import annotations

import os
from pathlib import Path

# -- set for every process of a run ------------------------------------------------------------
RUN_DIR = "HPCRAY_RUN_DIR"            # the run directory (drivers, replicas, tasks, job steps)
RAY_MARKER = "HPCRAY_RAY_OF"          # "<cluster id>/<node>": scopes teardown to this job's node
NODE_IP = "HPCRAY_NODE_IP"            # the node's address on the allocation's network
HTTP_TOKEN_FILE = "HPCRAY_HTTP_TOKEN_FILE"  # the run's HTTP bearer token, a 0600 file
HTTP_TOKEN_SHA256 = "HPCRAY_HTTP_TOKEN_SHA256"  # its SHA-256, for Serve's controller and proxy
PORT_BLOCK = "HPCRAY_PORT_BLOCK"      # first port of the node's block (program services' ports)
RESUMED = "HPCRAY_RESUMED"            # a relay's successor job: how many jobs ran the run before

# -- set for drivers and executable stages -------------------------------------------------------
ENDPOINTS = "HPCRAY_ENDPOINTS"        # endpoints.json: each service's URLs
OPENAI_BASE_URL = "HPCRAY_OPENAI_BASE_URL"  # the run's OpenAI-compatible /v1
SERVICE_URL_PREFIX = "HPCRAY_SERVICE_"      # HPCRAY_SERVICE_<NAME>_URL per service
STAGE = "HPCRAY_STAGE"                # a stage task's stage name ...
TASK_INDEX = "HPCRAY_TASK_INDEX"      # ... and its index
DRIVER_GATE = "HPCRAY_DRIVER_GATE"    # a driver started early: the pipe (fd) it waits on

# -- set by the local launcher (one process per emulated node) -------------------------------------
NODE_NAME = "HPCRAY_NODE_NAME"
RANK = "HPCRAY_RANK"
LOCAL_RANK = "HPCRAY_LOCAL_RANK"
NRANKS = "HPCRAY_NRANKS"
LOCAL_JOB_TAG = "HPCRAY_LOCAL_JOB_TAG"  # a local worker job's tag: its emulated nodes' names

# -- set by the job script ------------------------------------------------------------------------
PYTHON = "HPCRAY_PYTHON"              # the job's interpreter (allocation.python), for setup lines

# -- read: a user's or site's settings -------------------------------------------------------------
RUN_ROOT = "HPCRAY_RUN_ROOT"          # where run directories go (default ~/.hpcray/runs)
SITES_PATH = "HPCRAY_SITES_PATH"      # extra directories of site profiles
LAUNCHER = "HPCRAY_LAUNCHER"          # overrides the site's launcher inside the job
PORT_CLAIMS = "HPCRAY_PORT_CLAIMS"    # where node agents claim port blocks (default /tmp)
LEDGER = "HPCRAY_LEDGER"              # "1" (allocation.env): replicas keep request ledgers
METRICS = "HPCRAY_METRICS"            # "0" (allocation.env): no per-request metrics recorded

# -- Ray's, set by hpcray for the processes it starts ----------------------------------------------
RAY_ADDRESS = "RAY_ADDRESS"
RAY_AUTH_MODE = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
RAY_USAGE_STATS = "RAY_USAGE_STATS_ENABLED"   # "0": nothing leaves the allocation
RAY_DRAIN_TIMEOUT = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"  # "0": hpcray drains services itself
RAY_SERVE_PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # the proxy's middlewares
RAY_AUTOSCALER_METRIC_PORT = "AUTOSCALER_METRIC_PORT"  # Ray's fixed exporter ports, moved into
RAY_DASHBOARD_METRIC_PORT = "DASHBOARD_METRIC_PORT"    # the job's own port block
TMPDIR = "TMPDIR"                     # the node's short temp dir, in place of the site's
RAY_TMPDIR = "RAY_TMPDIR"             # the same, for Ray's own lookups


def service_url_var(service: str) -> str:
    """HPCRAY_SERVICE_<NAME>_URL of a service (dashes become underscores)."""
    return f"{SERVICE_URL_PREFIX}{service.upper().replace('-', '_')}_URL"


def run_dir() -> Path | None:
    """The run directory of the process, when it is part of a run."""
    value = os.environ.get(RUN_DIR)
    return Path(value) if value else None


def resumed_after() -> int:
    """How many jobs ran this run before the one this process belongs to (0: the first job,
    or outside a run); a relay's successor sets it for every process it starts."""
    try:
        return max(0, int(os.environ.get(RESUMED, "0")))
    except ValueError:
        return 0


def current_node() -> str | None:
    """The name of the run's node this process is on (from the teardown marker every Ray
    process of the run inherits), or None outside a run."""
    return os.environ.get(RAY_MARKER, "/").rsplit("/", 1)[-1] or None
