"""Benchmarks: `make bench` runs all, `make bench BENCH=<name>` one.

Each benchmark is a module `bench/<name>.py` with `run() -> list[Figure]`. It
measures its reference (a raw COPY, the SMTP sink's own limit, a peer library)
in the same run, so the ratio holds on a shared, noisy machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from warehouse import settings

BENCH_DIR = settings.LOCAL_DIR / "bench"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    reference_name: str | None = None
    reference_value: float | None = None
    target: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def write_results(bench_name: str, figures: list[Figure]) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = BENCH_DIR / f"{bench_name}.json"
    path.write_text(json.dumps([f.as_dict() for f in figures], indent=2) + "\n")
    return path


def format_table(bench_name: str, figures: list[Figure]) -> str:
    def fmt(v):
        return "" if v is None else (f"{v:,.3f}" if isinstance(v, float) else str(v))

    header = ("name", "value", "unit", "reference", "ref value", "ratio", "target")
    rows = [header] + [
        (
            f.name,
            fmt(f.value),
            f.unit,
            f.reference_name or "",
            fmt(f.reference_value),
            fmt(f.ratio),
            f.target or "",
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"== bench {bench_name}"]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)
