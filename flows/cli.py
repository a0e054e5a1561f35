"""The ``abs-eval`` command line (filled in as the pipeline grows)."""
import typer

app = typer.Typer(help="ABS zero-shot CLIP evaluation pipeline.", no_args_is_help=True)
