from __future__ import annotations

from rest_framework import authentication, exceptions

from assure.services import api_token_authenticate


class TokenUser:
    """The principal of a request made with a workspace API token (not a person)."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, token):
        self.token = token
        self.username = f"token:{token.name}"

    def __str__(self) -> str:
        return self.username


class WorkspaceTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Token <key>`` with a workspace API token."""

    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: use 'Authorization: Token <key>'.")
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token header: the key has invalid characters.") from None
        token = api_token_authenticate(key=key)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        return TokenUser(token), token

    def authenticate_header(self, request):
        return self.keyword
