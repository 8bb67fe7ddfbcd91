"""Recall: "have we seen this bug before?" Search past memories for a new report and show
what was decided last time."""

import tempfile

import memcollect as mc

PAST = [
    ("bug", "Login fails on Safari 17 after password reset: session cookie is dropped"),
    ("decision", "Safari drops SameSite=None cookies without Secure: always set Secure"),
    ("bug", "Checkout hangs when the cart has exactly one item"),
    ("performance", "Search p99 rose to 2 s after the index rebuild"),
    ("feedback", "Users love the dark mode but the charts are unreadable"),
    ("error", "Timeout calling payments API after 15 s during the sale"),
]

with tempfile.TemporaryDirectory() as data_dir, mc.MemoryCollector(data_dir=data_dir) as memories:
    memories.collect_batch([{"category": c, "content": text} for c, text in PAST])
    memories.flush()

    report = "Users on Safari cannot log in after resetting their password"
    print("new report:", report)
    seen = memories.search(report, category="bug", limit=3)
    print("seen before:", bool(seen))
    print("closest:", seen[0].content)
    decisions = memories.search("safari cookie", category="decision")
    print("what we decided:", decisions[0].content)
