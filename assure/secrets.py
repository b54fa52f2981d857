"""Secrets encrypted at rest: model fields whose database column only ever holds a Fernet token.

``settings.ASSURE_SECRET_KEYS`` lists the keys: the first encrypts, every one decrypts
(``MultiFernet``). To rotate, an operator puts a new key first, restarts, runs
``manage.py rotate_secrets`` (which re-encrypts every stored secret with the new key) and then
drops the old key.

A token is random for each write, so an exact lookup on one of these fields never matches a
plaintext (only the blank value, stored as it is, can be looked up).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django import forms
from django.apps import apps
from django.conf import settings
from django.core import validators
from django.db import models


class SecretUnreadable(Exception):
    """A stored secret that none of ``ASSURE_SECRET_KEYS`` decrypts."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _keys() -> tuple[str, ...]:
    return tuple(settings.ASSURE_SECRET_KEYS)


def encrypt(text: str) -> str:
    return _fernet(_keys()).encrypt(text.encode()).decode()


def decrypt(token: str, *, what: str) -> str:
    """The plaintext of ``token``; ``what`` names the secret in the error when no key fits."""
    try:
        return _fernet(_keys()).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"{what} cannot be decrypted with any key in ASSURE_SECRET_KEYS: add back the key it was "
            "encrypted with (keep the newest first)."
        ) from None


def is_current(token: str) -> bool:
    """Whether the first (encrypting) key decrypts ``token``."""
    try:
        _fernet(_keys()[:1]).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def reencrypt(token: str, *, what: str) -> str:
    """``token`` encrypted again with the first key (its timestamp kept)."""
    try:
        return _fernet(_keys()).rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(f"{what} cannot be decrypted with any key in ASSURE_SECRET_KEYS.") from None


def fingerprint(value) -> str:
    """An HMAC-SHA256 of ``value`` (any JSON), keyed with SECRET_KEY: two values can be compared
    later without keeping either, and nobody without the key can test guesses against it."""
    message = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


class EncryptedTextField(models.TextField):
    """A secret string. Blank stays blank (it tells nobody anything); any other value is stored as a
    token. ``max_length`` bounds the plaintext (the token is longer), so the column is text."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_length is not None:
            self.validators.append(validators.MaxLengthValidator(self.max_length))

    def from_db_value(self, value, expression, connection):
        if not value:
            return value
        return decrypt(value, what=f"{self.model._meta.label}.{self.name}")

    def get_db_prep_value(self, value, connection, prepared=False):
        if hasattr(value, "as_sql"):
            return value
        value = super().get_db_prep_value(value, connection, prepared)
        return encrypt(value) if value else value

    def formfield(self, **kwargs):
        # One line, like the CharField these secrets used to be, rather than a TextField's textarea.
        return super().formfield(**{"widget": forms.TextInput, **kwargs})


class EncryptedJSONField(models.JSONField):
    """A secret JSON document (a target's headers), stored whole as one token in a text column."""

    def get_internal_type(self) -> str:
        return "TextField"

    def from_db_value(self, value, expression, connection):
        if value is None:
            return value
        return json.loads(decrypt(value, what=f"{self.model._meta.label}.{self.name}"), cls=self.decoder)

    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None or hasattr(value, "as_sql"):
            return value
        return encrypt(json.dumps(value, cls=self.encoder))


def encrypted_fields() -> list[tuple[type[models.Model], models.Field]]:
    """Every encrypted field of every installed model, for ``rotate_secrets``."""
    return [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, (EncryptedTextField, EncryptedJSONField))
    ]
