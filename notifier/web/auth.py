"""The web app's doors (docs/security.md): API keys for `/api`, a token for the operations views.

Every `/api` route lives on the router `api_router()` returns, whose one dependency decides:
- no key, or an unknown or revoked one: 401 with `WWW-Authenticate: Bearer`;
- a route with `{tenant_id}` in its path: that tenant's key or an operator key, else 403;
- any other `/api` route (cross-tenant: dead letters): an operator key, else 403.
A route added to that router is protected without saying so; a route added elsewhere under
`/api` fails tests/unit/test_access.py, which calls every route the app has.

`/metrics` and the details of `/health` are for the operator's monitoring: they take the
separate `metrics_token` (Prometheus' `authorization` setting), which works without the
database, so the health details still answer when the database is what is down.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from notifier.access import Caller, authenticate

bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                    description="An API key from `notifier keys create --tenant T` (that tenant) or "
                                "`notifier keys create --operator` (every tenant, dead letters).")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def caller_dependency(ctx: Any):
    """A dependency answering the Caller of a valid key, else 401."""

    def caller(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Caller:
        if credentials is None:
            raise unauthorized("an API key is needed: Authorization: Bearer <key>")
        found = authenticate(ctx.store, credentials.credentials)
        if found is None:
            raise unauthorized("unknown or revoked API key")
        return found

    return caller


def api_router(ctx: Any) -> APIRouter:
    """The router every `/api` route is declared on (see the module's docstring)."""
    caller = caller_dependency(ctx)

    def authorize(request: Request, who: Caller = Depends(caller)) -> Caller:
        tenant_id = request.path_params.get("tenant_id")
        if tenant_id is None and not who.operator:
            raise HTTPException(status_code=403, detail="this route needs an operator key")
        if tenant_id is not None and not who.may_read(tenant_id):
            raise HTTPException(status_code=403, detail="this key is not for this tenant")
        return who

    return APIRouter(prefix="/api", dependencies=[Depends(authorize)],
                     responses={401: {"description": "no API key, or an unknown or revoked one"},
                                403: {"description": "the key is another tenant's, or a tenant's on an operator "
                                                     "route"}})


def has_metrics_token(settings: Any, request: Request) -> bool:
    """The request carries `Authorization: Bearer <metrics_token>` (and one is configured)."""
    token = settings.metrics_token
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("latin-1", "replace"), token.encode("utf-8"))
