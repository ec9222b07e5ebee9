"""Prefect flows that compose the stage tasks, and the `refinevla` command line."""
