"""The test suite's own layout: test modules share helpers through tests/support and the
fixtures of conftest.py, never by importing one another; each support module says its role.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
SUPPORT = TESTS / "support"


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) for each absolute import in *tree*."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_module_imports_a_module_at_the_top_of_tests() -> None:
    """No test or support module imports another module of tests/ itself (test_* or a
    loose helper): shared code lives in tests/support, shared fixtures in conftest.py."""
    top_level = {path.stem for path in TESTS.glob("*.py")}
    offenders = []
    for path in sorted([*TESTS.glob("*.py"), *SUPPORT.glob("*.py")]):
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in top_level:
                offenders.append(f"{path.relative_to(TESTS)}:{line}: {module}")
    assert offenders == [], "move what is shared to tests/support:\n" + "\n".join(offenders)


def test_every_support_module_says_its_role() -> None:
    """Each tests/support module starts with a docstring."""
    modules = sorted(SUPPORT.glob("*.py"))
    assert len(modules) > 1
    missing = [path.name for path in modules
               if not ast.get_docstring(ast.parse(path.read_text(), str(path)))]
    assert missing == []
