"""Who wrote each line of a run's output: lines as Ray 2.60, Serve, Tune, Optuna, vLLM and
tqdm write them (copied from real runs' driver.log and job.out)."""

from __future__ import annotations

from hpcray.bootstrap.output import classify

DRIVER_LOG = [
    "2026-12-01 22:03:28,563 wrote a synthetic plate: 192 fields at doses [0.0, 0.5]",
    "[I 2026-12-01 22:03:30,520] A new study created in memory with name: optuna",
    "╭──────────────────────────────────────────────────────────╮",
    "│ Configuration for experiment     dose-vit                │",
    "├──────────────────────────────────────────────────────────┤",
    "│ Number of trials                 4                       │",
    "╰──────────────────────────────────────────────────────────╯",
    "",
    "View detailed results here: /runs/x/cellpainting/tune/dose-vit",
    "\x1b[36m(train_trial pid=22989)\x1b[0m Checkpoint successfully created at: Checkpoint(",
    'INFO 2026-12-01 22:04:22,248 serve 22939 -- Started Serve in namespace "serve".',
    "2026-12-01 22:03:16,919\tINFO worker.py:1 -- Connecting to existing Ray cluster",
    "\x1b[36m(ServeController pid=24798)\x1b[0m INFO 2026-12-01 22:04:23,522 controller 24798 "
    "-- Deploying new version of Deployment(name='dose-classifier')",
    "(ServeReplica:hpcray-llm:llm pid=17200) (EngineCore pid=17300) INFO 12-01 15:37:21 "
    "[model.py:733] Resolved architecture: LlamaForCausalLM",
    "(ServeReplica:hpcray-cls:cls pid=24864) Loading weights:   0%|          | 0/40 "
    "[00:00<?, ?it/s]\rLoading weights: 100%|██████████| 40/40 [00:00<00:00, 3152.84it/s]",
    "(ServeReplica:hpcray-cls:cls pid=24864) WARNING 2026-12-02 08:00:01,104 hpcray-cls_cls "
    "wimhitdc -- plate field 1: low contrast in the Mito channel",
    "\x1b[36m(ServeReplica:hpcray-cls:cls pid=24899)\x1b[0m WARNING 2026-12-02 08:00:07,311 "
    "hpcray-cls_cls q8rts0ab -- plate field 2: low contrast in the Mito channel\x1b[32m "
    "[repeated 1x across cluster]\x1b[0m",
    "[W 2026-12-01 22:03:31,000] Trial 3 failed because of the following error: nan",
    "(train_trial pid=1) /site-packages/x.py:3: UserWarning: `foo` is deprecated",
    "(run_function pid=5) ValueError: field 1: 'files' needs 5 paths",
    "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite "
    "retries remaining, so the task will be retried. Error: The actor is dead",
    "*** SIGTERM received at time=1796200362 on cpu 0 ***",
    "PC: @     0x7f9898abbd73  (unknown)  gc_collect_main",
    "[2026-12-02 08:32:42,806 E 31710 31710] logging.cc:474: *** SIGTERM received at "
    "time=1796200362 on cpu 0 ***",
    "[2026-12-02 08:32:42,836 E 31710 31710] logging.cc:474:     @     0x7f989865a050   "
    "44226312  (unknown)",
    "┌─────────────────────────┬──────────────┐",
    "│ held-out accuracy       │ 0.925        │",
    "└─────────────────────────┴──────────────┘",
]


def test_the_driver_s_own_lines_are_shown_and_the_rest_held_with_its_level():
    got = [(line.held, line.level, line.service) for line in classify(DRIVER_LOG)]
    own, info = (False, "INFO", None), (True, "INFO", None)
    assert got == [
        own, info, info, info, info, info, info,  # Optuna, then Tune's box
        own, info, info, info, info, info,  # Tune's prints, a worker, Serve, Ray, a controller
        (True, "INFO", "llm"),  # vLLM's engine inside a replica: the service's, vLLM's level
        (True, "INFO", "cls"), (True, "WARNING", "cls"), (True, "WARNING", "cls"),
        (True, "WARNING", None), (True, "WARNING", None), (True, "ERROR", None),
        (True, "ERROR", None),  # Ray's daemons forward without a pid
        info, info, (True, "ERROR", None), info,  # a fatal signal's news, not its frames
        own, own, own]  # the driver's summary table


def test_a_warning_repeated_by_other_replicas_or_by_ray_is_one_warning():
    lines = classify(DRIVER_LOG)
    first, again = lines[15], lines[16]
    assert first.key() == again.key() != lines[18].key()
    assert "[repeated" not in again.message and "\x1b" not in again.message
    assert [line.who for line in lines[9:13]] == ["train_trial", "Serve", "Ray",
                                                  "ServeController"]


def test_a_replica_record_made_in_a_request_is_one_warning_with_the_others():
    """Serve adds the request's id and route to records made while answering one."""
    lines = classify([
        "(ServeReplica:hpcray-cls:cls pid=24864) WARNING 2026-12-02 08:00:01,104 hpcray-cls_cls "
        "wimhitdc -- plate field 1: low contrast in the Mito channel",
        "(ServeReplica:hpcray-cls:cls pid=24864) WARNING 2026-12-02 08:00:02,511 hpcray-cls_cls "
        "wimhitdc 0f6a2d1c-9b1e-4c55-8f7e-1c3e2a6b9d40 /classify -- plate field 1: low "
        "contrast in the Mito channel"])
    assert [(line.held, line.level, line.service) for line in lines] == \
        [(True, "WARNING", "cls")] * 2
    assert lines[0].key() == lines[1].key()
