#!/usr/bin/env bash
# Installs Debian's slurm-wlm and munge for the test Slurm when they are missing and we can
# (root with apt-get). Otherwise the tests marked `slurm` are skipped with this reason.
set -euo pipefail
if command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "slurm-wlm/munge missing and not root with apt-get: Slurm tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null
