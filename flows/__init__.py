"""Prefect flows and the ``abs-eval`` command line. Nothing here computes."""
