"""A local SMTP sink (aiosmtpd) that stores every message it accepts as an .eml file.

    python -m harness.smtp_sink [--port 8025] [--dir .local/outbox] [--fail-rate 0.1]

Each accepted message becomes `<dir>/<n>-<uuid>.eml`, and a line in
`<dir>/index.jsonl` records when it was accepted, its Message-ID and its
recipients (what the trigger benchmark measures latency against). `--fail-rate`
answers that share of DATA commands with `451` without storing the message, for
tests of retries. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from pathlib import Path

from campaigns import config

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class StoringHandler:
    def __init__(self, directory: Path, fail_rate: float = 0.0, seed: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.accepted = 0
        self.rejected = 0
        self._index = open(self.directory / "index.jsonl", "a", buffering=1)  # noqa: SIM115 - lives as long as the sink
        self._prefix = uuid.uuid4().hex[:8]

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        # aiosmtpd reads commands one at a time from a buffered stream, so it handles
        # RFC 2920 pipelining correctly; it just does not say so.
        session.host_name = hostname
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        if self.fail_rate and self.random.random() < self.fail_rate:
            self.rejected += 1
            return "451 4.3.0 Injected transient failure, try again"
        content: bytes = envelope.original_content or envelope.content
        self.accepted += 1
        name = f"{self._prefix}-{self.accepted:08d}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(content)
        os.replace(tmp, self.directory / name)
        head = content[: content.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in content else content[:8192]
        m = _MESSAGE_ID.search(head)
        self._index.write(
            json.dumps(
                {
                    "accepted_at": time.time(),
                    "message_id": m.group(1).decode() if m else None,
                    "rcpt": envelope.rcpt_tos,
                    "file": name,
                }
            )
            + "\n"
        )
        return "250 2.0.0 OK stored"

    def close(self) -> None:
        self._index.close()


class SmtpSink:
    """The sink in a background thread of this process (tests, benchmarks)."""

    def __init__(
        self,
        directory: Path | None = None,
        port: int | None = None,
        fail_rate: float = 0.0,
        seed=None,
        *,
        handler_class: type[StoringHandler] = StoringHandler,
        **smtp_options,
    ):
        """`handler_class` and `smtp_options` (aiosmtpd's: tls_context, ssl_context,
        authenticator, ...) make it a relay that refuses in other ways, for tests."""
        from aiosmtpd.controller import Controller

        self.directory = Path(directory or config.sink_dir())
        self.port = port if port is not None else config.sink_port()
        self.handler = handler_class(self.directory, fail_rate, seed)
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            data_size_limit=10 * 1024 * 1024,
            ready_timeout=10,
            **smtp_options,
        )

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_index(directory: Path | None = None) -> list[dict]:
    path = Path(directory or config.sink_dir()) / "index.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=config.sink_port())
    parser.add_argument("--dir", type=Path, default=config.sink_dir())
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    sink = SmtpSink(args.dir, args.port, args.fail_rate, args.seed).start()
    print(f"SMTP sink on 127.0.0.1:{args.port}, storing into {args.dir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sink.stop()


if __name__ == "__main__":
    main()
