"""Deleting for good: a leaked secret, a user who asks to be forgotten, a retention window."""

import tempfile
import time
from pathlib import Path

import memcollect as mc

with tempfile.TemporaryDirectory() as data_dir, mc.MemoryCollector(data_dir=data_dir) as memories:
    leak = memories.collect(
        "error", "Payment call failed with key sk-live-51H8xQ2 in the header", session="s-7"
    )
    memories.collect("feedback", "Please forget my address: 12 Elm Street", session="s-42")
    memories.collect("feedback", "The export button is hard to find", session="s-42")
    memories.collect("decision", "Keep memories 90 days", session="s-1")

    # Deleting stores what was collected before it, then deletes from every place memcollect
    # keeps a memory: the store, the fallback, the dead letters, and the files on disk.
    print("deleted the leak:", memories.delete(leak))
    on_disk = [p for p in Path(data_dir).rglob("*") if p.is_file()]
    print("key still on disk:", any(b"sk-live-51H8xQ2" in p.read_bytes() for p in on_disk))
    print("deleted session s-42:", memories.delete(session="s-42"))
    print("left:", [m.content for m in memories.recent()])
    # Retention is a delete by time (from cron: memcollect delete --until 90d --yes).
    print("older than 90 days:", memories.delete(until=time.time() - 90 * 86400))
