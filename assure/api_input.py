"""The API's parser and paginator, named in settings.REST_FRAMEWORK: bad input is a 400, never a
server error. (Not in api_base.py: DRF imports these while importing its views, and api_base
imports DRF's viewsets.)"""

from __future__ import annotations

import codecs

from rest_framework import exceptions, parsers
from rest_framework.pagination import LimitOffsetPagination

from assure import json_input


class StrictJSONParser(parsers.JSONParser):
    """JSON bodies only (the API's one format): NaN, Infinity and nesting deeper than
    ``json_input.MAX_DEPTH`` are a 400 like any other malformed body."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = parsers.get_encoding(parser_context or {})
        try:
            return json_input.loads(codecs.getreader(encoding)(stream).read())
        except ValueError as exc:  # JSONDecodeError, JSONInputError, undecodable bytes
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """``limit`` above ``max_limit`` gives ``max_limit`` rows: a huge number would otherwise reach
    the database's LIMIT and overflow it. (A huge ``offset`` is past the count: an empty page.)"""

    max_limit = 500
