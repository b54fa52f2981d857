"""OpenAPI description of the workspace token authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class WorkspaceTokenScheme(OpenApiAuthenticationExtension):
    target_class = "assure.authentication.WorkspaceTokenAuthentication"
    name = "workspaceToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A workspace API token: `Token <key>` (create one with `manage.py create_api_token`).",
        }
