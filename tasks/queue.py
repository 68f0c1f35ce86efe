"""The SAQ queue shared by the web app (which enqueues) and the worker (which runs)."""

from __future__ import annotations

from saq import Queue

from app.settings import Settings

QUEUE_NAME = "medbook"


def create_queue(settings: Settings) -> Queue:
    return Queue.from_url(settings.redis_url, name=QUEUE_NAME)
