"""Service classes hpcray ships, which a workflow names by short name (`deployment: noop`):
each is an `hpcray.deployments` entry point in pyproject.toml (hpcray/plugins.py), so naming
them never imports a heavy (or GPU-only) backend. Any importable `module:Class` works too."""
