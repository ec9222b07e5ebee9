"""Data layer: RLDS reading, step/trace schemas, Parquet IO, statistics, the sample generator.

Imports nothing from `tasks/` or `flows/`; heavy libraries (TensorFlow) are imported inside functions.
"""
