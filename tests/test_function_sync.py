"""Custom-function sync: a signed probe to the function's webhook decides pending → synced | error.

Webhooks are real HTTP servers on local sockets; the probe goes through the real HTTP client.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection, transaction

from scenarios import services, sync
from scenarios.models import CustomFunction
from scenarios.services import function_mark_changed, function_request_sync, function_sync
from scenarios.sync import verify_signature
from scenarios.tasks import sync_function
from tests import factories as f
from tests.support import CeleryWorker, wait_for
from tests.test_admin import change_url, submitted_data

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-secret"


class Webhook:
    """A customer's function webhook on 127.0.0.1: ``answer(request) -> (status, body bytes)``, or
    ``(status, body, headers)``.

    Each request is recorded as ``{"method", "path", "headers", "body"}`` with the raw body bytes,
    so a test can check the signature over exactly what was sent.
    """

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[dict] = []
        self.released = threading.Event()  # set on close: frees a handler that is stalling on purpose
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = {"method": "POST", "path": self.path, "headers": self.headers, "body": body}
                hook.requests.append(request)
                status, reply, *headers = hook.answer(request)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    for name, value in (headers[0] if headers else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the prober gave up (timeout): nobody to answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lookup"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    started = []

    def start(answer=lambda request: (200, b'{"ok": true}')):
        started.append(Webhook(answer))
        return started[-1]

    yield start
    for hook in started:
        hook.close()


@pytest.fixture
def queued(monkeypatch):
    """The doorbells rung, as (task name, args), instead of messages to the broker."""
    rung = []
    monkeypatch.setattr(services, "ring", lambda task, *args: rung.append((task.name, args)))
    return rung


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_of(function_id) -> tuple[str, str]:
    function = CustomFunction.objects.get(pk=function_id)
    return function.sync_status, function.sync_error


# The probe --------------------------------------------------------------------------------------


def test_a_webhook_answering_2xx_syncs_the_function_after_a_signed_json_probe(webhook):
    hook = webhook(lambda request: (204, b""))
    function = f.CustomFunctionFactory(name="book_slot", url=hook.url, secret=SECRET)
    before = int(time.time())

    result = function_sync(function_id=function.pk)

    assert (result.sync_status, result.sync_error) == ("synced", "")
    assert result.synced_at is not None
    function.refresh_from_db()
    assert (function.sync_status, function.synced_at) == ("synced", result.synced_at)
    (request,) = hook.requests
    headers = request["headers"]
    assert (request["method"], request["path"]) == ("POST", "/hooks/lookup")
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "AssureAgent-sync/1"
    timestamp = headers["X-Assure-Timestamp"]
    assert before <= int(timestamp) <= time.time() + 1
    body = json.loads(request["body"])
    assert body == {"type": "assure.probe", "function": "book_slot", "parameters": function.parameters,
                    "sent_at": body["sent_at"]}
    assert datetime.fromisoformat(body["sent_at"]).timestamp() == int(timestamp)


def test_the_signature_verifies_with_the_functions_secret_and_fails_otherwise(webhook):
    hook = webhook()
    function_sync(function_id=f.CustomFunctionFactory(name="book_slot", url=hook.url, secret=SECRET).pk)
    (request,) = hook.requests
    raw, timestamp = request["body"], request["headers"]["X-Assure-Timestamp"]
    header = request["headers"]["X-Assure-Signature"]

    # The scheme as documented to customers, computed independently of scenarios.sync.
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert verify_signature(SECRET, timestamp, raw, header)
    assert verify_signature(SECRET, timestamp, raw.decode(), header, tolerance_seconds=300)
    assert not verify_signature("whsec-another-secret", timestamp, raw, header)
    assert not verify_signature(SECRET, timestamp, raw.replace(b"book_slot", b"book_slip"), header)
    assert not verify_signature(SECRET, str(int(timestamp) + 1), raw, header)
    assert not verify_signature(SECRET, timestamp, raw, header, tolerance_seconds=300, now=int(timestamp) + 301)
    assert not verify_signature("", timestamp, raw, header)


def test_a_function_without_a_secret_is_probed_unsigned(webhook):
    hook = webhook()
    function = f.CustomFunctionFactory(url=hook.url, secret="")

    assert function_sync(function_id=function.pk).sync_status == "synced"
    (request,) = hook.requests
    assert "X-Assure-Signature" not in request["headers"]
    assert request["headers"]["X-Assure-Timestamp"]


@pytest.mark.parametrize("status, hint", [
    (404, "check the URL's path, and that the webhook accepts POST"),
    (401, "check that the function's secret is the one your webhook verifies X-Assure-Signature with"),
    (503, "the webhook is failing or overloaded; check its logs"),
])
def test_an_error_answer_is_an_error_naming_the_url_the_status_and_the_body(webhook, status, hint):
    hook = webhook(lambda request: (status, ("No route\nfor this hook " + "x" * 500).encode()))
    function = f.CustomFunctionFactory(url=hook.url)

    result = function_sync(function_id=function.pk)

    assert (result.sync_status, result.synced_at) == ("error", None)
    assert result.sync_error.startswith(f"{hook.url} answered HTTP {status}: No route for this hook xxx")
    assert hint in result.sync_error
    excerpt = result.sync_error.split(f"HTTP {status}: ", 1)[1].split(" — ", 1)[0]
    assert len(excerpt) == 200
    assert len(hook.requests) == 1


def test_a_redirect_is_an_error_naming_where_it_points(webhook):
    hook = webhook(lambda request: (308, b"", {"Location": "https://elsewhere.example.com/hook"}))
    function = f.CustomFunctionFactory(url=hook.url)

    status, error = sync_of(function_sync(function_id=function.pk).pk)

    assert status == "error"
    assert error.startswith(f"{hook.url} answered HTTP 308 with no body — it redirects to "
                            "https://elsewhere.example.com/hook; use the final URL")
    assert len(hook.requests) == 1  # not followed


def test_a_closed_port_is_an_error_saying_the_connection_was_refused():
    port = closed_port()
    function = f.CustomFunctionFactory(url=f"http://127.0.0.1:{port}/hook")

    status, error = sync_of(function_sync(function_id=function.pk).pk)

    assert status == "error"
    assert error.startswith(f"could not connect to 127.0.0.1:{port}: connection refused")
    assert "check the URL's host and port" in error


def test_a_host_that_does_not_resolve_is_an_error_saying_so():
    function = f.CustomFunctionFactory(url="http://assure-sync-test.invalid/hook")

    status, error = sync_of(function_sync(function_id=function.pk).pk)

    assert status == "error"
    assert "the host name assure-sync-test.invalid does not resolve (DNS)" in error


def test_a_webhook_slower_than_the_timeout_is_an_error_saying_it_timed_out(webhook, monkeypatch):
    monkeypatch.setattr(sync, "PROBE_TIMEOUT_SECONDS", 0.5)
    hook = webhook()
    hook.answer = lambda request: (hook.released.wait(10), (200, b"too late"))[1]
    function = f.CustomFunctionFactory(url=hook.url)
    started = time.monotonic()

    status, error = sync_of(function_sync(function_id=function.pk).pk)

    assert time.monotonic() - started < 5
    assert status == "error"
    assert error.startswith(f"{hook.url} timed out after 0.5s")
    assert len(hook.requests) == 1


def test_an_invalid_parameters_schema_is_an_error_and_nothing_is_sent(webhook):
    hook = webhook()
    # Saved past validation (as an older release or a data migration could have).
    broken = {"type": "object", "properties": {"id": {"type": "strin"}}}
    function = f.CustomFunctionFactory(url=hook.url, parameters=broken)

    status, error = sync_of(function_sync(function_id=function.pk).pk)

    assert status == "error"
    assert "Not a valid JSON Schema at properties/id/type" in error
    assert "Fix the function's parameters" in error
    assert hook.requests == []


@pytest.mark.parametrize("decided", ["synced", "error"])
def test_a_function_no_longer_pending_is_not_probed_again(webhook, decided):
    hook = webhook()
    function = f.CustomFunctionFactory(url=hook.url, sync_status=decided, sync_error="earlier")

    assert sync_of(function_sync(function_id=function.pk).pk) == (decided, "earlier")
    assert hook.requests == []


def test_the_task_syncs_by_id_and_ignores_a_deleted_function(webhook):
    hook = webhook()
    function = f.CustomFunctionFactory(url=hook.url)

    sync_function(str(function.pk))
    assert sync_of(function.pk) == ("synced", "")

    gone = f.CustomFunctionFactory(url=hook.url)
    gone_id = str(gone.pk)
    gone.delete()
    sync_function(gone_id)
    sync_function(str(uuid.uuid4()))
    assert len(hook.requests) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("edit", ["url changed", "retry clicked", "description changed"])
def test_a_function_changed_while_its_probe_is_in_flight_is_not_overwritten(webhook, queued, edit):
    """The webhook answers 200, but the function changed while it was answering: that answer was
    about the function as it was, so it must not mark the new one synced."""
    new_url = "https://hooks.example.com/v2/lookup"

    def answer(request):
        try:  # another user, through another connection, while the probe waits for its answer
            function = CustomFunction.objects.get(pk=function_id)
            if edit == "url changed":
                function.url = new_url
                function_mark_changed(function=function, changed_fields=["url"])
                function.save()
            elif edit == "retry clicked":
                function_request_sync(function=function)
            else:
                function.description = "Looks up a booking by its reference."
                function.save()
        finally:
            connection.close()
        return 200, b"{}"

    hook = webhook(answer)
    function = f.CustomFunctionFactory(url=hook.url)
    function_id = function.pk

    result = function_sync(function_id=function_id)

    assert len(hook.requests) == 1
    assert (result.sync_status, result.sync_error, result.synced_at) == ("pending", "", None)
    if edit == "url changed":
        assert result.url == new_url
    if edit == "retry clicked":
        assert queued == [("scenarios.tasks.sync_function", (str(function_id),))]


# Requesting a sync ------------------------------------------------------------------------------


def test_request_sync_sets_pending_and_queues_once_on_commit_and_never_on_rollback(
    queued, django_capture_on_commit_callbacks
):
    function = f.CustomFunctionFactory(sync_status="error", sync_error="could not connect")
    updated_at = function.updated_at

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        function_request_sync(function=function)
        assert queued == []  # a worker must never look before the change is committed
        stored = CustomFunction.objects.get(pk=function.pk)
        assert (stored.sync_status, stored.sync_error, stored.synced_at) == ("pending", "", None)
        assert stored.updated_at > updated_at
    assert len(callbacks) == 1
    assert queued == [("scenarios.tasks.sync_function", (str(function.pk),))]
    assert function.sync_status == "pending"

    other = f.CustomFunctionFactory(sync_status="error", sync_error="timed out")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            function_request_sync(function=other)
            raise RuntimeError("the save failed")
    assert callbacks == []
    assert len(queued) == 1
    assert sync_of(other.pk) == ("error", "timed out")


def test_request_sync_of_a_deleted_function_queues_nothing(queued, django_capture_on_commit_callbacks):
    function = f.CustomFunctionFactory()
    CustomFunction.objects.filter(pk=function.pk).delete()

    with django_capture_on_commit_callbacks(execute=True):
        function_request_sync(function=function)

    assert queued == []
    assert not CustomFunction.objects.filter(pk=function.pk).exists()


def test_a_doorbell_that_cannot_reach_the_broker_does_not_fail_the_request(caplog):
    class Unreachable:
        name = "scenarios.tasks.sync_function"

        def apply_async(self, **kwargs):
            raise ConnectionError("Error 111 connecting to redis")

    services.ring(Unreachable(), "some-id")
    assert "could not queue scenarios.tasks.sync_function" in caplog.text


# API --------------------------------------------------------------------------------------------


def test_the_sync_action_answers_202_pending_and_the_task_then_syncs_the_function(
    api, workspace, webhook, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "ring", lambda task, *args: task(*args))  # the worker, inline
    hook = webhook()
    function = f.CustomFunctionFactory(agent__workspace=workspace, url=hook.url, sync_status="error",
                                       sync_error="could not connect")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(f"/api/v1/functions/{function.pk}/sync/")
        assert response.status_code == 202, response.content
        assert (response.json()["id"], response.json()["sync_status"], response.json()["sync_error"]) == (
            str(function.pk), "pending", "")
        assert hook.requests == []  # only once committed

    assert len(callbacks) == 1
    assert len(hook.requests) == 1
    assert sync_of(function.pk) == ("synced", "")
    assert api.get(f"/api/v1/functions/{function.pk}/").json()["sync_status"] == "synced"


def test_the_sync_action_on_another_workspaces_function_is_404(
    api, other_workspace, queued, django_capture_on_commit_callbacks
):
    theirs = f.CustomFunctionFactory(agent__workspace=other_workspace, sync_status="error")

    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"/api/v1/functions/{theirs.pk}/sync/").status_code == 404

    assert queued == []
    assert sync_of(theirs.pk)[0] == "error"


def test_creating_a_function_through_the_api_requests_its_sync(
    api, workspace, queued, django_capture_on_commit_callbacks
):
    agent = f.AgentFactory(workspace=workspace)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/functions/", {
            "agent": str(agent.pk), "name": "book_slot", "url": "https://hooks.example.com/book",
            "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}, "secret": SECRET,
        }, content_type="application/json")

    assert response.status_code == 201, response.content
    assert response.json()["sync_status"] == "pending"
    assert queued == [("scenarios.tasks.sync_function", (response.json()["id"],))]


@pytest.mark.parametrize("before, change, requested", [
    ("synced", {"description": "Only the words."}, False),
    ("synced", {"url": "https://hooks.example.com/v2/lookup"}, True),
    ("synced", {"secret": "whsec-rotated"}, True),
    ("error", {"description": "Only the words."}, True),
    ("pending", {"description": "Only the words."}, True),
])
def test_updating_a_function_through_the_api_requests_a_sync_when_it_is_not_synced_after(
    api, workspace, queued, django_capture_on_commit_callbacks, before, change, requested
):
    function = f.CustomFunctionFactory(agent__workspace=workspace, sync_status=before,
                                       sync_error="boom" if before == "error" else "")

    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(f"/api/v1/functions/{function.pk}/", change, content_type="application/json")

    assert response.status_code == 200, response.content
    expected = "pending" if requested else "synced"
    assert response.json()["sync_status"] == expected
    assert sync_of(function.pk)[0] == expected
    assert queued == ([("scenarios.tasks.sync_function", (str(function.pk),))] if requested else [])


# Admin ------------------------------------------------------------------------------------------


def test_an_admin_change_of_the_url_sets_pending_and_requests_a_sync(
    member_client, workspace, queued, django_capture_on_commit_callbacks
):
    function = f.CustomFunctionFactory(agent=f.AgentFactory(workspace=workspace), sync_status="synced")
    data = submitted_data(member_client.get(change_url(function)))

    data["description"] = "Only the words changed."
    with django_capture_on_commit_callbacks(execute=True):
        assert member_client.post(change_url(function), data).status_code == 302
    assert sync_of(function.pk)[0] == "synced"
    assert queued == []

    data["url"] = "https://hooks.example.com/v2/lookup"
    with django_capture_on_commit_callbacks(execute=True):
        assert member_client.post(change_url(function), data).status_code == 302
    assert sync_of(function.pk)[0] == "pending"
    assert queued == [("scenarios.tasks.sync_function", (str(function.pk),))]


def test_saving_a_function_in_error_in_the_admin_tries_again(
    member_client, workspace, queued, django_capture_on_commit_callbacks
):
    function = f.CustomFunctionFactory(agent=f.AgentFactory(workspace=workspace), sync_status="error",
                                       sync_error="could not connect")
    data = submitted_data(member_client.get(change_url(function)))

    with django_capture_on_commit_callbacks(execute=True):
        assert member_client.post(change_url(function), data).status_code == 302

    assert sync_of(function.pk) == ("pending", "")
    assert queued == [("scenarios.tasks.sync_function", (str(function.pk),))]


def test_functions_changed_or_added_inline_on_the_agent_page_request_their_sync(
    member_client, workspace, queued, django_capture_on_commit_callbacks
):
    agent = f.AgentFactory(workspace=workspace)
    changed = f.CustomFunctionFactory(agent=agent, name="a_changed", sync_status="synced")
    untouched = f.CustomFunctionFactory(agent=agent, name="b_untouched", sync_status="synced")
    data = submitted_data(member_client.get(change_url(agent)))
    index = next(i for i in range(2) if data[f"functions-{i}-id"] == changed.pk)
    data[f"functions-{index}-url"] = "https://hooks.example.com/v2/lookup"
    data["functions-TOTAL_FORMS"] = 3
    data.update({
        "functions-2-id": "", "functions-2-agent": agent.pk, "functions-2-name": "c_added",
        "functions-2-description": "", "functions-2-url": "https://hooks.example.com/added",
        "functions-2-parameters": '{"type": "object", "properties": {}}', "functions-2-secret": "",
    })

    with django_capture_on_commit_callbacks(execute=True):
        response = member_client.post(change_url(agent), data)
    assert response.status_code == 302, response.context and response.context["errors"]

    added = CustomFunction.objects.get(agent=agent, name="c_added")
    assert sync_of(changed.pk)[0] == "pending"
    assert sync_of(untouched.pk)[0] == "synced"
    assert added.sync_status == "pending"
    assert sorted(queued) == sorted([
        ("scenarios.tasks.sync_function", (str(changed.pk),)),
        ("scenarios.tasks.sync_function", (str(added.pk),)),
    ])


# End to end: a real Celery worker picks up the doorbell -----------------------------------------


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, test_redis_url):
    with django_db_blocker.unblock():
        started = CeleryWorker(redis_url=test_redis_url, name="sync")
    yield started
    started.stop()


@pytest.mark.django_db(transaction=True)
def test_a_function_created_through_the_api_is_synced_by_a_worker_and_retry_reports_a_failure(
    worker, api, workspace, webhook
):
    hook = webhook()
    agent = f.AgentFactory(workspace=workspace)

    response = api.post("/api/v1/functions/", {
        "agent": str(agent.pk), "name": "book_slot", "url": hook.url, "secret": SECRET,
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
    }, content_type="application/json")
    assert response.status_code == 201, response.content
    function_id = response.json()["id"]
    wait_for(lambda: sync_of(function_id)[0] == "synced", 30, message=f"function to sync\n{worker.output()}")
    request = hook.requests[-1]
    assert verify_signature(SECRET, request["headers"]["X-Assure-Timestamp"], request["body"],
                            request["headers"]["X-Assure-Signature"])

    hook.answer = lambda request: (500, b"database is down")
    response = api.post(f"/api/v1/functions/{function_id}/sync/")
    assert (response.status_code, response.json()["sync_status"]) == (202, "pending")
    wait_for(lambda: sync_of(function_id)[0] == "error", 30, message=f"function to fail\n{worker.output()}")
    assert sync_of(function_id)[1].startswith(f"{hook.url} answered HTTP 500: database is down")
