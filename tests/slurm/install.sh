#!/usr/bin/env bash
# Installs what the real-program tests need when it is missing and we can (root with
# apt-get): Debian's slurm-wlm and munge for the test Slurm, podman (with runc and
# catatonit) and charliecloud for the container tests, prometheus (with promtool) for
# the metrics tests, and chromium-headless-shell for the report page's screenshot.
# Otherwise the tests that need them are skipped with that reason.
set -euo pipefail
need=()
if ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  need+=(slurm-wlm munge)
fi
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
    || [ ! -e /usr/libexec/podman/catatonit ]; then
  need+=(podman runc catatonit)
fi
if ! command -v ch-run >/dev/null 2>&1; then
  need+=(charliecloud-runtime)
fi
# a real browser draws `hpcray report`'s page in tests/views (a screenshot of the timeline)
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  need+=(chromium-headless-shell)
fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  need+=(prometheus)  # scrapes a live run (tests/services/test_live_run.py, docs/metrics.md)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "${need[*]} missing and not root with apt-get: the tests that need them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
