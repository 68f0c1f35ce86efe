"""Rendering: one URL serves a page and, for htmx, just a named block of it.

A page with no fragment is a plain `Template`. HTML lives in templates only, where Jinja
escapes it; tests/unit/test_no_html_in_python.py keeps it so.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment
from litestar import Request
from litestar.enums import MediaType
from litestar.response import Response, Template

VARY = {"Vary": "HX-Request"}
MESSAGE = "_message.html"


def environment(app: Any) -> Environment:
    return app.template_engine.engine  # the Jinja environment Litestar configured


def render(env: Environment, template: str, block: str | None = None, **context: Any) -> str:
    """A template, or one named block of it rendered alone (for htmx and websockets)."""
    tpl = env.get_template(template)
    if block is None:
        return tpl.render(context)
    return "".join(tpl.blocks[block](tpl.new_context(context)))


def page(
    request: Request[Any, Any, Any], template: str, block: str, **context: Any
) -> Template | Response[str]:
    """The whole page, or only `block` when htmx asks (HX-Request), with Vary set."""
    if request.headers.get("hx-request"):
        return fragment(request, template, block, **context)
    return Template(template_name=template, context=context, headers=VARY)


def fragment(
    request: Request[Any, Any, Any], template: str, block: str | None = None, **context: Any
) -> Response[str]:
    """Only `block` of a page, or a whole partial template, for answers to htmx actions."""
    html = render(environment(request.app), template, block, request=request, **context)
    return Response(html, media_type=MediaType.HTML, headers=VARY)


def message(
    request: Request[Any, Any, Any],
    element: str,
    text: str,
    *,
    error: bool = False,
    polite: bool = True,
) -> Response[str]:
    """A one-line notice or error that replaces the page's element `element`."""
    return fragment(request, MESSAGE, element=element, text=text, error=error, polite=polite)
