"""Public pages."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from app.web.guards import PUBLIC


@get("/", opt=PUBLIC, include_in_schema=False)
async def home() -> Template:
    """The landing page."""
    return Template(template_name="home.html")
