"""Run extraction without Airflow: `python -m extract [--until ISO-8601]`.

Without --until the window ends at the start of the current hour, as the
hourly DAG's latest complete interval would.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from extract.load import extract_all
from warehouse import env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--until", type=datetime.fromisoformat, help="window end (timezone-aware ISO-8601)")
    args = parser.parse_args()
    env.apply_defaults()
    until = args.until or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if until.tzinfo is None:
        parser.error(f"--until needs a timezone, e.g. {until.isoformat()}+00:00")
    for result in extract_all(until):
        print(f"raw.{result.raw_table:<18} {result.row_count:>10,} rows  batch {result.batch_id}")


if __name__ == "__main__":
    main()
