"""The product packages stand alone: they never import the Airflow glue (orchestration/)
or the development harness (harness/), which import them."""

from __future__ import annotations

import ast

import pytest

from warehouse import settings

PRODUCT = ("campaigns", "collector", "extract", "ml", "simulator", "warehouse")
OUTSIDE = {"harness", "orchestration"}


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # imports inside functions too
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", PRODUCT)
def test_product_package_imports_neither_harness_nor_orchestration(package):
    files = sorted((settings.PROJECT_ROOT / package).rglob("*.py"))
    assert files
    offending = {
        str(path.relative_to(settings.PROJECT_ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in OUTSIDE
        )
        for path in files
    }
    assert not {k: v for k, v in offending.items() if v}
