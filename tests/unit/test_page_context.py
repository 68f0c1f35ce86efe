"""The app's Jinja environment: templates are read once, not stat-ed on every render."""

from __future__ import annotations

from app.routes import views
from app.settings import get_settings
from app.web.asgi import create_app


def test_templates_are_not_checked_for_changes_on_every_render() -> None:
    env = views.environment(create_app(get_settings()))  # connects to nothing
    assert env.auto_reload is False
    first = env.get_template("patient/_day.html")
    assert env.get_template("patient/_day.html") is first  # from the cache, no stat
