"""What the collecting process and the storing process say to each other, one JSON line each."""

from __future__ import annotations

import contextlib
import sys
from typing import IO

import msgspec

from ..stats import Latency

__all__ = ["COUNTED", "PROTOCOL", "Done", "Range", "child_command", "tell_stopped"]

# The version of what the two sides say to each other: a storing process started after an
# upgrade on disk must not misread an older collecting process.
PROTOCOL = 4

# The child's counters that travel to the collecting process, as deltas, in this order.
COUNTED = (
    "stored",
    "retried",
    "retried_memories",
    "failed",
    "dead_lettered",
    "batches",
    "stored_in_fallback",
    "moved_to_primary",
)


class Range(msgspec.Struct, array_like=True):
    """A stretch of a spool segment to store, whole frames only."""

    number: int
    path: str
    start: int
    end: int


class Done(msgspec.Struct, array_like=True):
    """The child's answer to a range, or a heartbeat (number -1)."""

    number: int
    records: int
    deltas: list[int]  # of COUNTED since the last answer
    dropped: dict[str, int]  # memories dropped since the last answer, by reason
    batch_latency: Latency
    store_latency: Latency
    circuit_failures: int
    circuit_open_for: float  # seconds since the circuit opened; -1 when closed
    circuit_error: str
    # Where a storing thread stopped short of the range's end, for a process that takes the
    # rest; -1: the range was stored to its end.
    stored_to: int = -1
    # The last word of a process that stops for a failure: why, in one sentence.
    stopped: str = ""


def tell_stopped(answers: IO[bytes], why: str) -> None:
    """Give the collecting side, as the last answer, why this storer stops (for its health)."""
    last = Done(-1, 0, [0] * len(COUNTED), {}, Latency(), Latency(), 0, -1.0, "", stopped=why)
    with contextlib.suppress(OSError, ValueError):  # the other side may be gone already
        answers.write(encode(last) + b"\n")
        answers.flush()


encode = msgspec.json.Encoder().encode
decode_range = msgspec.json.Decoder(Range).decode
decode_done = msgspec.json.Decoder(Done).decode


def child_command() -> list[str]:
    """The command that starts a storing process."""
    return [sys.executable, "-m", "memcollect.storer"]
