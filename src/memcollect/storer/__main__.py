"""`python -m memcollect.storer`: the storing process."""

from .child import main

main()
