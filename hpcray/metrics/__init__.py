"""What a run records about itself (node use, per-request metrics, progress) and how it is
shown: the head's Prometheus endpoint (prometheus.py), the pipelines' figures (plotting.py)."""
