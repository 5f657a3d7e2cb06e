"""matplotlib for every plot hpcray writes: the file-only Agg backend, since compute nodes
have no display."""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
