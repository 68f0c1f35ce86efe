"""Rendering helpers: one URL serves a page and, for htmx, just a named block of it."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment
from litestar import Request
from litestar.enums import MediaType
from litestar.response import Response, Template

VARY = {"Vary": "HX-Request"}


def environment(app: Any) -> Environment:
    return app.template_engine.engine  # the Jinja environment Litestar configured


def render_block(env: Environment, template: str, block: str, **context: Any) -> str:
    """A named block of a page template, rendered alone (for htmx and websockets)."""
    tpl = env.get_template(template)
    return "".join(tpl.blocks[block](tpl.new_context(context)))


def page(
    request: Request[Any, Any, Any], template: str, block: str, **context: Any
) -> Template | Response[str]:
    """The whole page, or only `block` when htmx asks (HX-Request), with Vary set."""
    if request.headers.get("hx-request"):
        html = render_block(environment(request.app), template, block, request=request, **context)
        return Response(html, media_type=MediaType.HTML, headers=VARY)
    return Template(template_name=template, context=context, headers=VARY)


def fragment(
    request: Request[Any, Any, Any], template: str, block: str, **context: Any
) -> Response[str]:
    """Only a block, for answers to htmx actions."""
    html = render_block(environment(request.app), template, block, request=request, **context)
    return Response(html, media_type=MediaType.HTML, headers=VARY)
