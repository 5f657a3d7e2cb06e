"""The paper's three pipelines, built on hpcray's public API (services, stages, the run
context). Each driver's options model is an `hpcray.driver_options` plug-in (pyproject.toml),
so its `driver.args` are checked when the workflow file is loaded."""
