"""The project's own checks: system checks, deploy checks, migrations in step with models."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_migrations_match_the_models():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_system_checks_are_clean():
    call_command("check", fail_level="WARNING")


def test_deploy_checks_are_clean_with_production_settings(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG",)}
    env.update(
        DATABASE_URL="postgres://assure@db.internal:5432/assure",
        REDIS_URL="redis://redis.internal:6379/0",
        SECRET_KEY="k" * 20 + "-Production-Secret-Key-0123456789-abcdefghijklmnop",
        HTTPS="true",
        ALLOWED_HOSTS="assure.example.com",
        ASSURE_VAR_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
