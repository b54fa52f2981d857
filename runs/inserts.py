"""Plain INSERTs of a run's child rows, plain conditional UPDATEs, and the plain SELECT of which
runs match, for the run engine's hot paths.

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
# run on (Django's adapt_* of these are the identity for SQLite and PostgreSQL), with that type.
_PLAIN_FIELDS = ((models.BooleanField, bool), (models.IntegerField, int), (models.CharField, str),
                 (models.TextField, str))


def _preparer(field, connection):
    """``field.get_db_prep_save`` for one value, skipped for a plain value of a plain field: it was
    most of a row's cost (a transcript row has eight values)."""
    def prepare(value):
        return field.get_db_prep_save(value, connection)

    plain = None if field.is_relation else next(
        (kind for cls, kind in _PLAIN_FIELDS if isinstance(field, cls)), None)
    if plain is None:
        return prepare
    return lambda value: value if value is None or type(value) is plain else prepare(value)


def _field(meta, name):
    return meta.pk if name == "pk" else meta.get_field(name)


def _where(meta, quote, where: dict) -> tuple[str, list]:
    """``a = %s AND b = %s`` for equality lookups, and the fields whose values fill it."""
    fields = [_field(meta, name) for name in where]
    return " AND ".join(f"{quote(field.column)} = %s" for field in fields), fields


def update_where(model, where: dict, values: dict) -> int:
    """``model.objects.filter(**where).update(**values)`` for plain field values and equality
    lookups (``pk`` included); returns how many rows changed."""
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    meta = model._meta
    sets = [(_field(meta, name), value) for name, value in values.items()]
    condition, fields = _where(meta, quote, where)
    sql = (f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f, _ in sets)} "
           f"WHERE {condition}")
    params = [f.get_db_prep_save(value, connection) for f, value in sets]
    params += [f.get_db_prep_value(value, connection) for f, value in zip(fields, where.values())]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def pks_where(model, pks, where: dict) -> set[str]:
    """Which of ``pks`` (strings) match ``where`` (equality lookups): the ORM's
    ``filter(pk__in=pks, **where).values_list("pk")`` as one plain SELECT."""
    connection = connections[DEFAULT_DB_ALIAS]
    quote = connection.ops.quote_name
    meta = model._meta
    # The keys as the database holds them (a uuid is hex on SQLite), to map the answer back.
    stored = {meta.pk.get_db_prep_value(pk, connection): pk for pk in pks}
    condition, fields = _where(meta, quote, where)
    sql = (f"SELECT {quote(meta.pk.column)} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} IN "
           f"({', '.join(['%s'] * len(stored))}) AND {condition}")
    params = [*stored, *(f.get_db_prep_value(value, connection) for f, value in zip(fields, where.values()))]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {stored[found] for found, in cursor.fetchall()}
