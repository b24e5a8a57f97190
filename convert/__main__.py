"""`python -m hobbit_convert convert|info ...`: the converter's commands on their own."""

from .cli import main

main()
