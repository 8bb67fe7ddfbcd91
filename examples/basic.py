"""Basic use: collect a few memories, flush, read them back, search, look at the stats."""

import tempfile

import memcollect as mc

with tempfile.TemporaryDirectory() as data_dir, mc.MemoryCollector(data_dir=data_dir) as memories:
    bug = memories.collect(
        "bug",
        "Login fails on Safari 17 after a password reset",
        {"module": "auth", "browser": "Safari 17"},
        tags=["auth", "safari"],
        project="web",
        agent="qa-agent",
    )
    memories.collect("feedback", "Love the new dashboard, much faster", tags=["dashboard"])
    memories.collect("decision", "Retry payment calls with backoff and full jitter")

    print("read back before storing:", memories.get(bug).content)
    memories.flush()
    print("stored:", memories.count())
    hit = memories.search("safari login", category="bug")[0]
    print("search 'safari login':", hit.content, "| priority", hit.priority)
    print("newest first:", [m.category for m in memories.recent(3)])
    stats = memories.stats()
    print(f"accepted {stats.accepted}, stored {stats.stored}, dropped {stats.dropped}")
    print("health:", memories.health().status)
