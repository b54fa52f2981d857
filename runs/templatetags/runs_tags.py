import json

from django import template

register = template.Library()


@register.filter
def tojson(value) -> str:
    """Compact JSON for showing tool arguments and results (escaped by the template as usual)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
