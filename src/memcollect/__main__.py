"""`python -m memcollect`: the command line."""

from .cli import main

main()
