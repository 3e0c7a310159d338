"""harness.live.AcceptedIndex: the sink's index read incrementally, a half-written line left for later."""

from __future__ import annotations

import json

from harness.live import AcceptedIndex


def test_reads_only_complete_lines_and_only_once(tmp_path):
    index = AcceptedIndex(tmp_path)
    assert index.read() == {}  # no index yet
    line = lambda n: json.dumps({"message_id": f"<m{n}@x>", "accepted_at": float(n)})  # noqa: E731
    with (tmp_path / "index.jsonl").open("w") as f:
        f.write(line(1) + "\n" + line(2) + "\n" + line(3)[:10])  # the sink is mid-write
    assert index.read() == {"<m1@x>": 1.0, "<m2@x>": 2.0}
    with (tmp_path / "index.jsonl").open("a") as f:
        f.write(line(3)[10:] + "\n")
    assert index.read() == {"<m1@x>": 1.0, "<m2@x>": 2.0, "<m3@x>": 3.0}
    assert index.offset == (tmp_path / "index.jsonl").stat().st_size
