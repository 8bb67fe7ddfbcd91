"""Storing in another process (`storer="process"`): the spool is the hand-over.

The collecting process only appends to its spool. A child process (`python -m
memcollect.storer`) stores what the spool holds: the collecting process sends it byte ranges
of spool segments over a pipe, the child reads, stores (with the same storing engine as the
worker thread: retries, bisection, dead letters and fallback) and answers each range with
what became of its records. Only then are those records acknowledged in the spool, so a child
that dies loses nothing: its ranges are sent again to the next one, and stores ignore repeats.

Why a process: collecting and storing in one process share one GIL, which bounds the two
together; apart, each has a core of its own.
"""

from .collecting import StoringProcess
from .pipeline import ProcessPipeline
from .protocol import PROTOCOL, child_command

__all__ = ["PROTOCOL", "ProcessPipeline", "StoringProcess", "child_command"]
