"""`python -m mlpkit` runs the command line."""

from mlpkit.cli import main

main()
