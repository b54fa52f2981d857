"""Plain INSERTs of a run's child rows, and plain conditional UPDATEs of one row, for the run
engine's hot paths.

The ORM's ``create``, ``bulk_create`` and ``update`` compile their statement each time (and
``create`` asks for the new id back): on a worker that writes thousands of rows and events a
second, compiling was a larger share of its CPU than the database's own work. These build the
statement from the model's fields once per call and hand the rows to one ``execute`` or
``executemany``.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.utils import timezone


def insert_many(model, names: tuple[str, ...], members: list[tuple[str, dict]], now=None) -> None:
    """Insert one row of ``model`` per ``(run id, {name: value})`` of ``members``, each with the
    fields ``names`` (and ``created_at`` = ``now``, by default the present, if the model has one)."""
    if not members:
        return
    # The connection itself, not ``django.db.connection``: that proxy's attribute lookups, made for
    # every value of every row, were a third of this function's time.
    connection = connections[DEFAULT_DB_ALIAS]
    with_created = any(field.name == "created_at" for field in model._meta.concrete_fields)
    now = now or timezone.now()
    fields = [model._meta.get_field(name) for name in ("run_id", *names, *(("created_at",) if with_created else ()))]
    quote = connection.ops.quote_name
    sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    prepare = [_preparer(field, connection) for field in fields]
    created = [fields[-1].get_db_prep_save(now, connection)] if with_created else []
    params = []
    for run_id, row in members:
        values = (run_id, *(row[name] for name in names))
        params.append([prep(value) for prep, value in zip(prepare, values)] + created)
    with connection.cursor() as cursor:
        if len(params) == 1:  # psycopg's executemany enters pipeline mode: more work for one row
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)


# Fields whose preparation leaves a value of their own Python type as it is, on every backend we
# run on (Django's adapt_* of these are the identity for SQLite and PostgreSQL).
_PLAIN_FIELDS = (models.CharField, models.TextField, models.IntegerField, models.BooleanField)
_PLAIN_TYPES = {str: models.CharField, int: models.IntegerField, bool: models.BooleanField}


def _preparer(field, connection):
    """``field.get_db_prep_save`` for one value, skipped for a plain value of a plain field: it was
    most of a row's cost (a transcript row has eight values)."""
    def prepare(value):
        return field.get_db_prep_save(value, connection)

    if field.is_relation or not isinstance(field, _PLAIN_FIELDS):
        return prepare
    kind = models.IntegerField if isinstance(field, models.IntegerField) else (
        models.BooleanField if isinstance(field, models.BooleanField) else models.CharField)

    def plain(value):
        if value is None or _PLAIN_TYPES.get(type(value)) is kind:
            return value
        return prepare(value)
    return plain


def update_where(model, where: dict, values: dict) -> int:
    """``model.objects.filter(**where).update(**values)`` for plain field values and equality
    lookups (``pk`` included); returns how many rows changed."""
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    meta = model._meta

    def field(name):
        return meta.pk if name == "pk" else meta.get_field(name)

    sets = [(field(name), value) for name, value in values.items()]
    conditions = [(field(name), value) for name, value in where.items()]
    sql = (f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f, _ in sets)} "
           f"WHERE {' AND '.join(f'{quote(f.column)} = %s' for f, _ in conditions)}")
    params = [f.get_db_prep_save(value, connection) for f, value in sets]
    params += [f.get_db_prep_value(value, connection) for f, value in conditions]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
