"""Admin pages for a doctor's visit types: list, add, change, delete.

One URL serves the page and its htmx fragment (`types`); a form with a mistake comes back
with 200, the message and what was typed. The rules live in app/scheduling/visit_types.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, get
from litestar.response import Response, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, Invalid
from app.i18n import gettext
from app.routes.actions import Command, form_post
from app.routes.inputs import Id
from app.routes.views import page
from app.scheduling import directory, visit_types
from app.web.guards import allow
from db.models import VisitType

ADMIN = [allow("admin")]
NUMBERS = ("minutes", "buffer_before_minutes", "buffer_after_minutes")
OPTIONAL = ("min_notice_minutes", "horizon_days")


@dataclass
class TypeForm:
    """A visit type's form as typed (text), so a mistake shows what was entered."""

    name: str = ""
    minutes: str = "30"
    buffer_before_minutes: str = "0"
    buffer_after_minutes: str = "0"
    online: bool = True
    min_notice_minutes: str = ""
    horizon_days: str = ""

    @classmethod
    def of(cls, v: VisitType) -> TypeForm:
        return cls(
            v.name,
            str(v.minutes),
            str(v.buffer_before_minutes),
            str(v.buffer_after_minutes),
            v.online,
            "" if v.min_notice_minutes is None else str(v.min_notice_minutes),
            "" if v.horizon_days is None else str(v.horizon_days),
        )

    @classmethod
    def posted(cls, form: Any) -> TypeForm:
        text = {name: str(form.get(name, "")).strip() for name in (*NUMBERS, *OPTIONAL, "name")}
        return cls(online=form.get("online") == "on", **text)

    def fields(self) -> dict[str, Any]:
        """The typed values as the domain takes them, or Invalid naming a bad number."""
        out: dict[str, Any] = {"name": self.name, "online": self.online}
        for name in (*NUMBERS, *OPTIONAL):
            raw = getattr(self, name)
            if raw == "" and name in OPTIONAL:
                out[name] = None
            elif raw == "" and name != "minutes":  # an empty buffer: none
                out[name] = 0
            elif raw.isdigit():
                out[name] = int(raw)
            else:
                raise Invalid(
                    gettext("%(value)s must be a whole number, got %(raw)r")
                    % {"value": name.replace("_", " "), "raw": raw}
                )
        return out


async def _types_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, doctor_id: int, **context: Any
) -> Template | Response[str]:
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    found = await visit_types.list_visit_types(db_session, doctor_id, staff_only_too=True)
    forms = context.pop("forms", {})
    context.setdefault("form", TypeForm())
    return page(
        request,
        "admin/visit_types.html",
        "types",
        doctor=doctor,
        clinic=clinic,
        types=[(v, forms.get(v.id) or TypeForm.of(v)) for v in found],
        **context,
    )


@get("/admin/doctors/{doctor_id:int}/visit-types", guards=ADMIN, include_in_schema=False)
async def visit_types_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, doctor_id: Id
) -> Template | Response[str]:
    """The doctor's visit types, each editable, and a form to add one."""
    return await _types_page(request, db_session, doctor_id)


@form_post("/admin/doctors/{doctor_id:int}/visit-types", "admin")
async def add_visit_type_page(
    request: Request[Any, Any, Any], command: Command, doctor_id: Id
) -> Template | Response[str]:
    """Add a visit type from the form."""
    form = TypeForm.posted(await request.form())
    try:
        created = await visit_types.create_visit_type(
            command.session,
            command.effects,
            doctor_id,
            visit_types.VisitTypeIn(**form.fields()),
            actor_user_id=command.actor.id,
        )
    except DomainError as exc:
        return await _types_page(request, command.session, doctor_id, form=form, error=exc.detail)
    notice = gettext("Added %(name)s.") % {"name": created.name}
    return await _types_page(request, command.session, doctor_id, notice=notice)


@form_post("/admin/doctors/{doctor_id:int}/visit-types/{visit_type_id:int}", "admin")
async def change_visit_type_page(
    request: Request[Any, Any, Any], command: Command, doctor_id: Id, visit_type_id: Id
) -> Template | Response[str]:
    """Save a visit type's row (`action=save`) or delete it (`action=delete`)."""
    posted = await request.form()
    form = TypeForm.posted(posted)
    try:
        if posted.get("action") == "delete":
            await visit_types.delete_visit_type(
                command.session,
                command.effects,
                doctor_id,
                visit_type_id,
                actor_user_id=command.actor.id,
                now=command.now,
            )
            notice = gettext("Deleted.")
        else:
            changed = await visit_types.change_visit_type(
                command.session,
                command.effects,
                doctor_id,
                visit_type_id,
                form.fields(),
                actor_user_id=command.actor.id,
            )
            notice = gettext("Saved %(name)s.") % {"name": changed.name}
    except DomainError as exc:
        return await _types_page(
            request,
            command.session,
            doctor_id,
            forms={visit_type_id: form},
            row_error=(visit_type_id, exc.detail),
        )
    return await _types_page(request, command.session, doctor_id, notice=notice)


ROUTES = [visit_types_page, add_visit_type_page, change_visit_type_page]
