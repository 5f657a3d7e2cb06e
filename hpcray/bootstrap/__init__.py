"""Inside the allocation: plan, start Ray on every node, wait, run the driver, tear down."""

from hpcray.bootstrap.connect import connect

__all__ = ["connect"]
