"""The API's documentation page: Swagger UI from our own static files, no inline script,
under a Content-Security-Policy that admits exactly those files (security_headers.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Router
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar._openapi.schema_generation.schema import SchemaCreator
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Schema
from litestar.typing import FieldDefinition

SWAGGER_DIR = "/static/vendor/swagger-ui-5.36.0"
SWAGGER_SCRIPTS = (f"{SWAGGER_DIR}/swagger-ui-bundle.js", "/static/js/api-docs.js")
SWAGGER_CSS = f"{SWAGGER_DIR}/swagger-ui.css"


class VendoredSwagger(SwaggerRenderPlugin):
    """Litestar's Swagger page, but its script and style are files we serve and its
    start-up is static/js/api-docs.js, which loads the schema from openapi.json."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(js_url=SWAGGER_SCRIPTS[0], css_url=SWAGGER_CSS, **kwargs)

    def receive_router(self, router: Router) -> None:
        """Add no `oauth2-redirect.html`: that page exists for OAuth2's browser flows, which
        medbook has none of (the API takes a bearer token from /api/auth/token), and
        Litestar's copy runs an inline script our CSP refuses."""

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        config, engine = request.app.openapi_config, request.app.template_engine
        assert config is not None and engine is not None  # create_app sets both
        template = engine.get_template("api_docs.html")
        return template.render(
            title=openapi_schema["info"]["title"],
            css=SWAGGER_CSS,
            scripts=SWAGGER_SCRIPTS,
            schema_url=f"{config.path}/openapi.json",
        ).encode()


class ClosedStructs(StructSchemaPlugin):
    """Litestar's schema of a msgspec Struct, saying `additionalProperties: false` when the
    struct refuses unknown fields (every request body does): otherwise the schema would call
    valid a body the API answers 400."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        _keep_zero_bounds(field_definition.type_, schema)
        return schema


def _keep_zero_bounds(struct: type, schema: Schema) -> None:
    """Put back a lower bound of 0 that Litestar drops from a field typed as a union
    (`Annotated[int, Meta(ge=0)] | UnsetType`: it tests the bound for truth, and 0 is
    false), so the schema does not call a negative buffer valid."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        prop = (schema.properties or {}).get(field.encode_name)
        if not isinstance(prop, Schema) or prop.minimum is not None:
            continue
        # msgspec leaves UnsetType out of a field's type: `Buffer | UnsetType` is an IntType
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else ()
        kinds = kinds or (field.type,)
        numbers = (msgspec.inspect.IntType, msgspec.inspect.FloatType)
        if any(isinstance(k, numbers) and k.ge == 0 for k in kinds):
            prop.minimum = 0
