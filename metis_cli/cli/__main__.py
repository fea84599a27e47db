"""`python -m metis_cli.cli ...`: the `metis` command (also what torchrun launches with `-m`)."""

from metis_cli.cli import main

if __name__ == "__main__":
    main()
