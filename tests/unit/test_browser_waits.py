"""Browser tests poll with arrow functions, never bare expressions.

Playwright polls a `wait_for_function` predicate inside the page. A bare expression
(`"window.htmx !== undefined"`) is compiled there with `eval`, which medbook's
Content-Security-Policy (`script-src 'self'`) refuses: the wait passes only when the
condition already holds at the first check, and fails at random otherwise (CI did, on
e2e/test_admin_leave.py). An arrow function (`"() => ..."`) is passed as a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

E2E = Path(__file__).resolve().parents[2] / "e2e"


def bare_expression_waits(source: str) -> list[int]:
    """Lines of `wait_for_function` calls whose predicate string is not a function."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "wait_for_function"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.lstrip().startswith(("(", "function", "async"))
        ):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_a_bare_expression():
    assert bare_expression_waits('page.wait_for_function("window.x > 0")') == [1]
    assert bare_expression_waits('page.wait_for_function("() => window.x > 0")') == []


def test_no_browser_test_polls_a_bare_expression():
    found = {
        f"{path.name}:{line}"
        for path in sorted(E2E.glob("*.py"))
        for line in bare_expression_waits(path.read_text())
    }
    assert found == set()
