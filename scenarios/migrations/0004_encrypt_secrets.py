"""Encrypt the secrets stored in plain text (``assure/secrets.py``).

Three steps, so the data step sees the raw column values: the columns become plain text (wide enough
for a token, and on SQLite free of the JSON check a token would fail), every value is encrypted in
place, then the fields become the encrypted ones (no change to the columns). Reversible: the data step
decrypts on the way back.
"""

import django.db.models
from django.db import migrations

import assure.secrets
import scenarios.validators

# model name -> secret fields
SECRETS = {"agent": ["llm_api_key"], "customfunction": ["secret"], "target": ["headers"]}


def _convert(apps, schema_editor, convert):
    for model_name, fields in SECRETS.items():
        model = apps.get_model("scenarios", model_name)
        for row in model._base_manager.using(schema_editor.connection.alias).only("pk", *fields).iterator():
            changes = {name: convert(getattr(row, name)) for name in fields if getattr(row, name)}
            if changes:
                model._base_manager.using(schema_editor.connection.alias).filter(pk=row.pk).update(**changes)


def encrypt(apps, schema_editor):
    _convert(apps, schema_editor, assure.secrets.encrypt)


def decrypt(apps, schema_editor):
    _convert(apps, schema_editor, lambda token: assure.secrets.decrypt(token, what="a stored secret"))


class Migration(migrations.Migration):

    dependencies = [
        ("scenarios", "0003_rehearsal_targets"),
    ]

    operations = [
        migrations.AlterField(
            model_name="agent", name="llm_api_key", field=django.db.models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="customfunction", name="secret", field=django.db.models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="target", name="headers", field=django.db.models.TextField(blank=True, default="{}"),
        ),
        migrations.RunPython(encrypt, decrypt),
        migrations.AlterField(
            model_name="agent",
            name="llm_api_key",
            field=assure.secrets.EncryptedTextField(blank=True, max_length=500),
        ),
        migrations.AlterField(
            model_name="customfunction",
            name="secret",
            field=assure.secrets.EncryptedTextField(blank=True, help_text="Signs requests to the webhook.", max_length=200),
        ),
        migrations.AlterField(
            model_name="target",
            name="headers",
            field=assure.secrets.EncryptedJSONField(blank=True, default=dict, help_text="Secret request headers.", validators=[scenarios.validators.validate_headers]),
        ),
    ]
