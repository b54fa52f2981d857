"""Encrypt the workspace's webhook secret (``assure/secrets.py``), the way
``scenarios/migrations/0004_encrypt_secrets.py`` encrypts the others: plain text column, each value
encrypted in place, then the encrypted field. Reversible."""

import django.db.models
from django.db import migrations

import assure.secrets


def _convert(apps, schema_editor, convert):
    workspaces = apps.get_model("assure", "workspace")._base_manager.using(schema_editor.connection.alias)
    for pk, secret in workspaces.exclude(webhook_secret="").values_list("pk", "webhook_secret"):
        workspaces.filter(pk=pk).update(webhook_secret=convert(secret))


def encrypt(apps, schema_editor):
    _convert(apps, schema_editor, assure.secrets.encrypt)


def decrypt(apps, schema_editor):
    _convert(apps, schema_editor, lambda token: assure.secrets.decrypt(token, what="a webhook secret"))


class Migration(migrations.Migration):

    dependencies = [
        ("assure", "0002_workspace_default_parallel_from_settings"),
    ]

    operations = [
        migrations.AlterField(
            model_name="workspace", name="webhook_secret", field=django.db.models.TextField(blank=True),
        ),
        migrations.RunPython(encrypt, decrypt),
        migrations.AlterField(
            model_name="workspace",
            name="webhook_secret",
            field=assure.secrets.EncryptedTextField(blank=True, max_length=128),
        ),
    ]
