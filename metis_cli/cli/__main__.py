"""`python -m metis_cli.cli ...`: the `metis` command (also what torchrun launches with `-m`)."""

from metis_cli.cli import app

if __name__ == "__main__":
    app(prog_name="metis")
