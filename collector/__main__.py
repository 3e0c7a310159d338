"""`python -m collector`: serve the collector with uvicorn on COLLECTOR_HOST:COLLECTOR_PORT."""

from __future__ import annotations

import logging.config
import os
import sys

import uvicorn

from collector.privacy import log_config
from warehouse import env


def main() -> None:
    env.apply_defaults()
    config = log_config(os.environ.get("COLLECTOR_LOG_LEVEL", "INFO").upper())
    logging.config.dictConfig(config)
    from collector.app import create_app
    from collector.config import ConfigError

    try:
        create_app()  # a configuration that must not serve stops here, with its reason, before binding
    except ConfigError as exc:
        logging.getLogger("collector").error("%s", exc)
        sys.exit(2)
    uvicorn.run(
        "collector.app:create_asgi_app",  # the factory reads the rest of the configuration (collector.config)
        factory=True,
        host=os.environ.get("COLLECTOR_HOST", "127.0.0.1"),
        port=int(os.environ.get("COLLECTOR_PORT", "8765")),
        workers=1,
        log_config=config,
        access_log=False,  # it would log client addresses
        server_header=False,
        proxy_headers=False,  # nothing uses the client address (and logs must not carry it)
        backlog=2048,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
