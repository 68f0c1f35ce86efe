"""Admin: staff accounts (create, change role, deactivate), as pages and as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, get, patch, post
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.access import accounts
from app.errors import DomainError
from app.routes.inputs import Email, Id, IdField, Name, Role, StaffPassword
from app.routes.responses import READ, SIGNED_IN, answers
from app.services import Services
from app.web.guards import allow, client_addr, current_user
from db.models import ROLES, Clinic, Doctor, User

ADMIN = [allow("admin")]


class NewAccount(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    email: Email
    password: StaffPassword  # the staff length for every role an admin creates
    full_name: Name | None = None
    clinic_id: IdField | None = None
    doctor_id: IdField | None = None


class AccountChange(msgspec.Struct, forbid_unknown_fields=True):
    role: Role | None = None
    clinic_id: IdField | None = None
    doctor_id: IdField | None = None
    is_active: bool | None = None
    totp_required: bool | None = None
    remove_totp: bool = False  # the user lost their phone and recovery codes


class Account(msgspec.Struct):
    id: int
    email: str
    role: str
    clinic_id: int | None
    doctor_id: int | None
    patient_id: int | None
    is_active: bool
    totp_enabled: bool = False
    totp_required: bool = False


def _actor(request: Request[Any, Any, Any]) -> int:
    user = current_user(request)
    assert user is not None  # the route is guarded
    return user.id


def _account(a: accounts.AccountRow | User, totp_enabled: bool) -> Account:
    return Account(
        a.id,
        a.email,
        a.role,
        a.clinic_id,
        a.doctor_id,
        a.patient_id,
        a.is_active,
        totp_enabled,
        a.totp_required,
    )


@get("/api/users", guards=ADMIN, tags=["admin"], responses=READ)
async def list_users_api(db_session: AsyncSession, role: Role | None = None) -> list[Account]:
    """Accounts, newest first, optionally of one role."""
    rows = await accounts.list_accounts(db_session, role=role)
    return [_account(r, r.totp_enabled) for r in rows]


@post(
    "/api/users",
    guards=ADMIN,
    tags=["admin"],
    status_code=201,
    responses=answers(*SIGNED_IN, 409, 422),
)
async def create_user_api(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: NewAccount
) -> Account:
    """Create a doctor, front-desk, admin (or patient) account."""
    user = await accounts.create_staff_account(
        db_session,
        actor_user_id=_actor(request),
        role=data.role,
        email=data.email,
        password=data.password,
        full_name=data.full_name,
        clinic_id=data.clinic_id,
        doctor_id=data.doctor_id,
        client_addr=client_addr(request),
    )
    return _account(user, user.totp_secret is not None)


@patch(
    "/api/users/{user_id:int}",
    guards=ADMIN,
    tags=["admin"],
    responses=answers(*SIGNED_IN, 404, 409, 422, _409="that doctor already has a login"),
)
async def update_user_api(
    request: Request[Any, Any, Any], db_session: AsyncSession, user_id: Id, data: AccountChange
) -> Account:
    """Change a user's role (with its clinic or doctor), (de)activate them, require a
    second factor of a staff account or remove one."""
    user = await accounts.update_account(
        db_session,
        Services.of(request.app).redis,
        actor_user_id=_actor(request),
        user_id=user_id,
        role=data.role,
        clinic_id=data.clinic_id,
        doctor_id=data.doctor_id,
        is_active=data.is_active,
        totp_required=data.totp_required,
        remove_totp=data.remove_totp,
        client_addr=client_addr(request),
    )
    return _account(user, user.totp_secret is not None)


async def _page(db_session: AsyncSession, **context: Any) -> Template:
    clinics = (await db_session.execute(select(Clinic.id, Clinic.name).order_by(Clinic.name))).all()
    doctors = (
        await db_session.execute(select(Doctor.id, Doctor.full_name).order_by(Doctor.full_name))
    ).all()
    context.setdefault("form", {})
    return Template(
        "admin/users.html",
        context={
            "accounts": await accounts.list_accounts(db_session, staff_only=True),
            "roles": ROLES,
            "clinics": clinics,
            "doctors": doctors,
            **context,
        },
    )


@get("/admin/users", guards=ADMIN, include_in_schema=False)
async def users_page(db_session: AsyncSession) -> Template:
    """Staff accounts and a form to add one."""
    return await _page(db_session)


@dataclass
class NewAccountForm:
    role: str = ""
    email: str = ""
    password: str = ""
    full_name: str = ""
    clinic_id: str = ""
    doctor_id: str = ""


def _int(raw: str) -> int | None:
    return int(raw) if raw.strip().isdigit() else None


def _flag(raw: str) -> bool | None:
    return {"true": True, "false": False}.get(raw)


@post("/admin/users", guards=ADMIN, include_in_schema=False)
async def create_user_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    data: Annotated[NewAccountForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Template:
    """Create an account from the form; errors keep what was typed."""
    try:
        user = await accounts.create_staff_account(
            db_session,
            actor_user_id=_actor(request),
            role=data.role,
            email=data.email,
            password=data.password,
            full_name=data.full_name or None,
            clinic_id=_int(data.clinic_id),
            doctor_id=_int(data.doctor_id),
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        form = {**data.__dict__, "password": ""}
        return await _page(db_session, form=form, error=exc.detail)
    return await _page(db_session, created=user.email)


@dataclass
class AccountChangeForm:
    role: str = ""
    clinic_id: str = ""
    doctor_id: str = ""
    is_active: str = ""
    totp_required: str = ""
    remove_totp: str = ""


@post("/admin/users/{user_id:int}", guards=ADMIN, include_in_schema=False)
async def update_user_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    user_id: Id,
    data: Annotated[AccountChangeForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Template | Redirect:
    """Apply a role change, (de)activation or second-factor change; show the list again."""
    try:
        await accounts.update_account(
            db_session,
            Services.of(request.app).redis,
            actor_user_id=_actor(request),
            user_id=user_id,
            role=data.role or None,
            clinic_id=_int(data.clinic_id),
            doctor_id=_int(data.doctor_id),
            is_active=_flag(data.is_active),
            totp_required=_flag(data.totp_required),
            remove_totp=data.remove_totp == "true",
            client_addr=client_addr(request),
        )
    except DomainError as exc:
        return await _page(db_session, error=exc.detail)
    return Redirect("/admin/users", status_code=303)


ROUTES = [
    list_users_api,
    create_user_api,
    update_user_api,
    users_page,
    create_user_page,
    update_user_page,
]
