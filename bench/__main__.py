"""Run benchmarks: `python -m bench [name ...]` (all when no name is given)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench
from warehouse import env


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def main(names: list[str]) -> int:
    env.apply_defaults()
    names = names or available()
    unknown = set(names) - set(available())
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; available: {', '.join(available())}")
        return 2
    for name in names:
        figures = importlib.import_module(f"bench.{name}").run()
        path = bench.write_results(name, figures)
        print(bench.format_table(name, figures))
        print(f"   -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
