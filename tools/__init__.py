"""Development tools of this checkout (not installed with the package): `python -m tools.stage_deps`."""
