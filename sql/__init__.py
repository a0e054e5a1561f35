"""The SQL of abs-eval, shipped as package data: ``views/`` (run in file-name order) and
``queries/`` (one named SELECT per file). ``tasks.results.catalog`` loads them; nothing here runs."""

from pathlib import Path

#: The folder holding ``views/`` and ``queries/`` (in a source tree or an installed package).
SQL_DIR = Path(__file__).resolve().parent
