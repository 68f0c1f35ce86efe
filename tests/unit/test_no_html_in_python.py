"""HTML is written in templates, where Jinja escapes it, never in app/'s Python strings."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

# HTML and SVG elements. A name list, not any `<word`, so an email address
# (`medbook <no-reply@…>`) or a Message-ID (`<notification-7@…>`) is not taken for a tag.
ELEMENTS = """
a abbr address article aside audio b blockquote body br button canvas caption code col
colgroup data datalist dd del details dfn dialog div dl dt em fieldset figcaption figure
footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd label legend
li link main mark menu meta meter nav noscript object ol optgroup option output p picture
pre progress q s samp script section select small source span strong style sub summary sup
table tbody td template textarea tfoot th thead time title tr u ul var video
circle defs ellipse g line path polygon polyline rect svg text tspan
"""
TAG = re.compile(rf"</?(?:{'|'.join(ELEMENTS.split())})(?=[\s/>])", re.IGNORECASE)


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of docstring nodes: prose about markup (`<body hx-headers>`) is allowed."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def html_strings(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of each string constant, f-string parts included, holding an HTML tag."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in skip:
            continue
        if isinstance(node.value, str) and TAG.search(node.value):
            yield node.lineno, node.value


def test_the_check_finds_tags_in_strings_and_f_strings() -> None:
    source = (
        '"""A module about <p> tags."""\n'
        "def message(text):\n"
        '    """Builds a <p>."""\n'
        "    note = '<notification-1@clinic.test> medbook <no-reply@x.invalid>'\n"
        '    close = "</li>"\n'
        '    return f\'<p id="{text}" class="x">{text}</p>\'\n'
    )
    assert [line for line, _ in html_strings(source)] == [5, 6, 6]


def test_no_module_under_app_builds_html_in_a_string() -> None:
    modules = sorted(APP.rglob("*.py"))
    assert len(modules) > 20  # the check really walked the app
    offenders = [
        f"{path.relative_to(APP.parent)}:{line}: {text!r}"
        for path in modules
        for line, text in html_strings(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "move this HTML into a template:\n" + "\n".join(offenders)
