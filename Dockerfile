# AssureAgent image: one image for every process (daphne, Celery worker, Celery beat, migrate).
# The default command serves HTTP and websockets with daphne; docker-compose.yml runs the others.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --user-group --uid 10001 assure
WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the pins change,
# not on every source edit. The pins are read out of pyproject.toml, so there is no second list to
# keep in step.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself. Installed in place (editable, no deps: they are all above) because the
# settings find templates/, static/ and var/ beside the package, so the code must run from /app,
# not from a copy in site-packages.
COPY . .
RUN pip install --no-deps -e . \
    && rm -rf build

# Static files at build time. The settings demand nothing else here: with DATABASE_URL unset they
# fall back to the embedded default, which neither connects to a database nor starts Redis for
# collectstatic; the throwaway keys exist only for this command (without them the embedded default
# would write var/secret_key and var/secret_keys into the image).
RUN SECRET_KEY=collectstatic-only-not-a-real-key ASSURE_SECRET_KEYS=Y29sbGVjdHN0YXRpYy1vbmx5LW5vdC1hLXJlYWxrZXk= \
    python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /app/var/media \
    && chown -R assure:assure /app/var

USER assure
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "assure.asgi:application"]
