"""Units of pipeline work and the I/O they need.

Each module here does one job (storage, dataset layouts, sharding, caches,
inference, reports); Prefect flows in ``flows/`` chain them. Nothing here runs a
flow on import.
"""
