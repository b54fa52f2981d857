"""Keyset paging for lists of runs, newest first.

Runs pile up at the top of every list that shows them (new runs, newly finished runs). Paging by
offset reads and skips every row above the page, and an insert at the top shifts each later page by
one, so a reader walking the pages sees a row twice or not at all. Paging by position does neither:
a page is "the next N rows after this (time, id)", one range read on an index whose columns are the
ordering (``runs/models.py``, ``Run.Meta.indexes``), however deep, and rows added above the walk
never move it. The id breaks ties between equal times, so every row has exactly one place.

A position travels as an opaque cursor in the page's links (the API's ``next``/``previous``, the
results feed's Older/Newer); ``decode_cursor`` refuses anything not shaped like one. A cursor names
only a time and an id: whatever it says, the page is read from the workspace's own rows.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet
from rest_framework import serializers
from rest_framework.utils.urls import remove_query_param, replace_query_param

from assure.api_input import BoundedLimitOffsetPagination

# Longer than any cursor ``encode_cursor`` makes; anything longer is refused before decoding.
MAX_CURSOR_LENGTH = 200


class InvalidCursor(ValueError):
    """The text is not a cursor (cut short, edited, or from elsewhere)."""


@dataclass(frozen=True)
class Cursor:
    """A place in a keyset ordering: the row at (``at``, ``id``); ``newer`` pages towards the top
    (the rows before it), else towards the bottom (the rows after it). The row itself is on
    neither side."""

    at: datetime
    id: uuid.UUID
    newer: bool = False


def encode_cursor(cursor: Cursor) -> str:
    text = json.dumps([cursor.at.isoformat(), cursor.id.hex, int(cursor.newer)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    if not isinstance(text, str) or not text or len(text) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(text)
    try:
        at, run_id, newer = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        cursor = Cursor(at=datetime.fromisoformat(at), id=uuid.UUID(hex=run_id), newer=bool(newer))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError):
        # Not base64, not JSON, not a three-item list, not a time, not an id: all the same to the caller.
        raise InvalidCursor(text) from None
    if cursor.at.tzinfo is None or newer not in (0, 1):
        raise InvalidCursor(text)
    return cursor


@dataclass(frozen=True)
class Keyset:
    """Newest first by the time in ``field``, then by id: an ordering rows can be paged through by
    position. ``field`` must not be null in the rows paged (the queryset filters out nulls)."""

    field: str

    @property
    def ordering(self) -> tuple[str, str]:
        return (f"-{self.field}", "-id")

    def order(self, queryset: QuerySet) -> QuerySet:
        return queryset.order_by(*self.ordering)

    def cursor_at(self, row, *, newer: bool) -> Cursor:
        return Cursor(at=getattr(row, self.field), id=row.pk, newer=newer)

    def after(self, queryset: QuerySet, cursor: Cursor) -> QuerySet:
        """The rows below ``cursor``'s row, in order. Spelled as a range on the time (which the
        index reads) narrowed by the tie-break, rather than as one OR the planners cannot range over."""
        at, field = cursor.at, self.field
        below = Q(**{f"{field}__lte": at}) & (Q(**{f"{field}__lt": at}) | Q(id__lt=cursor.id))
        return self.order(queryset.filter(below))

    def before(self, queryset: QuerySet, cursor: Cursor) -> QuerySet:
        """The rows above ``cursor``'s row, nearest first (the ordering reversed)."""
        at, field = cursor.at, self.field
        above = Q(**{f"{field}__gte": at}) & (Q(**{f"{field}__gt": at}) | Q(id__gt=cursor.id))
        return queryset.filter(above).order_by(field, "id")


# Runs as the API lists them (newest created first) and as the results feed does (latest finished first).
CREATED = Keyset("created_at")
ENDED = Keyset("ended_at")


@dataclass(frozen=True)
class Page:
    rows: list
    older: Cursor | None  # the next page down, if there are rows below this one
    newer: Cursor | None  # the page above, if there are rows above this one


def keyset_page(queryset: QuerySet, keyset: Keyset, cursor: Cursor | None, size: int) -> Page:
    """The ``size`` rows of ``queryset`` at ``cursor`` (None: the top), with the cursors of the
    pages on either side. One ranged query for the rows (one more than asked tells whether there are
    more that way) and, away from the top, one indexed ``exists`` for the other side."""
    if cursor is None:
        rows = list(keyset.order(queryset)[: size + 1])
        return Page(rows=rows[:size], older=keyset.cursor_at(rows[size - 1], newer=False) if len(rows) > size else None,
                    newer=None)
    if not cursor.newer:
        rows = list(keyset.after(queryset, cursor)[: size + 1])
        page = rows[:size]
        older = keyset.cursor_at(page[-1], newer=False) if len(rows) > size else None
        above = keyset.cursor_at(page[0], newer=True) if page else None
        newer = above if above and keyset.before(queryset, above).exists() else None
        return Page(rows=page, older=older, newer=newer)
    rows = list(keyset.before(queryset, cursor)[: size + 1])
    page = rows[:size][::-1]
    newer = keyset.cursor_at(page[0], newer=True) if len(rows) > size else None
    below = keyset.cursor_at(page[-1], newer=False) if page else None
    older = below if below and keyset.after(queryset, below).exists() else None
    return Page(rows=page, older=older, newer=newer)


class RunPagination(BoundedLimitOffsetPagination):
    """The run list's pages: ``limit`` and ``offset`` as before (the CLI counts its own offsets),
    plus ``cursor``. The ``next`` and ``previous`` links are cursor links, from an offset page too,
    so a client following them reads every run once, in order, however many runs are created
    meanwhile. ``count`` is every run that matches the filters, on every page.

    The response keeps the shape of limit/offset paging: ``count, next, previous, results``.
    """

    cursor_query_param = "cursor"
    keyset = CREATED
    template = "rest_framework/pagination/previous_and_next.html"

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.limit = self.get_limit(request)
        self.count = self.get_count(queryset)
        self.offset = None
        self.display_page_controls = self.count > self.limit
        cursor_text = request.query_params.get(self.cursor_query_param)
        if cursor_text:
            try:
                cursor = decode_cursor(cursor_text)
            except InvalidCursor:
                raise serializers.ValidationError({self.cursor_query_param: [
                    "Not a cursor of this list: follow the next and previous links as they are given."]}) from None
            page = keyset_page(queryset, self.keyset, cursor, self.limit)
        elif self.offset_query_param in request.query_params:
            self.offset = self.get_offset(request)
            page = self._offset_page(queryset)
        else:
            page = keyset_page(queryset, self.keyset, None, self.limit)
        self.older, self.newer, self.empty = page.older, page.newer, not page.rows
        return page.rows

    def _offset_page(self, queryset) -> Page:
        if self.offset >= self.count:  # also keeps a huge offset away from the database's LIMIT
            return Page(rows=[], older=None, newer=None)
        if not self.offset:
            return keyset_page(queryset, self.keyset, None, self.limit)
        # Skipping ``offset`` rows reads each of them: skip over the index alone (time and id) to
        # the row just above the page, then read the page below it as a cursor does.
        ordered = self.keyset.order(queryset).values_list(self.keyset.field, "pk")
        try:
            at, above = ordered[self.offset - 1]
        except IndexError:  # rows deleted since the count
            return Page(rows=[], older=None, newer=None)
        rows = list(self.keyset.after(queryset, Cursor(at=at, id=above))[: self.limit + 1])
        page = rows[: self.limit]
        return Page(rows=page, older=self.keyset.cursor_at(page[-1], newer=False) if len(rows) > self.limit else None,
                    newer=self.keyset.cursor_at(page[0], newer=True) if page else None)

    def _link(self, cursor: Cursor) -> str:
        url = remove_query_param(self.request.build_absolute_uri(), self.offset_query_param)
        url = replace_query_param(url, self.limit_query_param, self.limit)
        return replace_query_param(url, self.cursor_query_param, encode_cursor(cursor))

    def get_next_link(self):
        return self._link(self.older) if self.older else None

    def get_previous_link(self):
        if self.newer:
            return self._link(self.newer)
        if self.offset and self.empty:  # past the end by offset: back by offset, as before
            return super().get_previous_link()
        return None

    def get_html_context(self):
        return {"previous_url": self.get_previous_link(), "next_url": self.get_next_link()}

    def get_schema_operation_parameters(self, view):
        return [*super().get_schema_operation_parameters(view), {
            "name": self.cursor_query_param, "required": False, "in": "query",
            "description": "A position in the list, from a next or previous link; takes the place of offset.",
            "schema": {"type": "string"},
        }]
