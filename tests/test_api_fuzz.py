"""No input gives a server error: schemathesis generates requests from /api/schema/ (valid ones and
ones that break the schema) for every operation and sends them to the Django app in-process, with a
workspace token. The only check is that nothing answers 5xx.

Bounded and deterministic: a few examples per operation, derandomized, so the suite stays fast and
a failure here reproduces. Operations that start a conversation with a customer's agent or probe a
function's webhook (run, run-all, retry, sync) are left out: they reach outside, which the rest of
the suite tests against local fakes.
"""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from assure.services import api_token_create
from tests import factories as f

OUTSIDE = r"/(run|run-all|retry|sync)/$"


def _api_schema():
    """What /api/schema/ serves, built when the module is collected: schemathesis's lazy
    ``from_fixture`` loader does not run under pytest 9, and a request at collection time would
    meet the API's throttling before the test Redis is up. Requests then go to the WSGI app."""
    loaded = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
    loaded.app = get_wsgi_application()
    return loaded.exclude(path_regex=OUTSIDE)


schema = _api_schema()


@pytest.fixture
def api_key(db, workspace, settings):
    settings.API_THROTTLE_RATE = None  # a few hundred requests per operation, from one token
    # Rows for the lists to serialize. Ids in generated paths are random, so reads and writes by id
    # mostly meet a 404; tests/test_bad_input.py sends the known bad bodies to real objects.
    scenario = f.ScenarioFactory(workspace=workspace)
    f.PathFactory(scenario=scenario)
    f.CustomFunctionFactory(agent=scenario.agent)
    _, key = api_token_create(workspace=workspace, name="fuzz")
    return key


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    # Called as a WSGI app, Django closes the database connection after each request, and with it
    # the test's transaction; Django's own test client disconnects these signals the same way.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@hypothesis_settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gives_a_server_error(case, api_key):
    case.call_and_validate(headers={"Authorization": f"Token {api_key}"}, checks=[not_a_server_error])
