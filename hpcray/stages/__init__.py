"""Compute stages: functions and executables as Ray tasks, with fan-out, dependencies,
streaming between stages, retries, timeouts and a record of every task attempt."""

from hpcray.stages.runner import StageError, StageRunner

__all__ = ["StageError", "StageRunner"]
