"""The audit trail pages: every event for admins, record accesses for each patient."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import audit
from app.web.guards import allow, current_user

PAGE_SIZE = 100


def _id(raw: str) -> int | None:
    return int(raw) if raw.strip().isdigit() else None


@get("/admin/audit", guards=[allow("admin")], include_in_schema=False)
async def audit_page(
    db_session: AsyncSession,
    action: str = "",
    actor_user: str = "",
    patient: str = "",
    flagged: str = "",
    before: str = "",
) -> Template:
    """Audit events, newest first, filtered by action, actor, patient or flag."""
    # Query values arrive as text: an empty filter field means "any", not a 400.
    events = await audit.list_events(
        db_session,
        action=action or None,
        actor_user_id=_id(actor_user),
        patient_id=_id(patient),
        flagged_only=flagged == "true",
        before_id=_id(before),
        limit=PAGE_SIZE,
    )
    filters = {
        "action": action,
        "actor": _id(actor_user),
        "patient": _id(patient),
        "flagged": flagged == "true",
    }
    return Template(
        "admin/audit.html",
        context={
            "events": events,
            "filters": filters,
            "more": len(events) == PAGE_SIZE,
            "actions": sorted(
                v for k, v in vars(audit).items() if k.isupper() and isinstance(v, str)
            ),
        },
    )


@get("/me/access-log", guards=[allow("patient")], include_in_schema=False)
async def access_log_page(request: Request[Any, Any, Any], db_session: AsyncSession) -> Template:
    """Who has read my records."""
    user = current_user(request)
    assert user is not None and user.patient_id is not None
    events = await audit.record_access_log(db_session, user.patient_id)
    return Template("auth/access_log.html", context={"events": events})


ROUTES = [audit_page, access_log_page]
