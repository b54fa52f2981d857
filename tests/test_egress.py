"""The egress policy (assure/egress.py): tenants' URLs never reach metadata, link-local or (on a
deployment) loopback and private addresses; redirects are never followed; the server's LLM key
never goes to a tenant's endpoint; replies and stored turns are capped."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest
from aiohttp import web

from assure import egress
from runs.connectors import ConnectionContext, ReplyTooLarge, TargetUnreachable, connection_for
from runs.execution import llm_settings
from runs.models import Run, Turn
from scenarios import sync
from tests import factories as f
from tests.fakes import AiohttpServer, FakeOpenAI
from tests.support import ROOT, CeleryWorker, FakeTarget, free_port, wait_for

TERMINAL = ("completed", "failed", "cancelled")


class RecordingServer:
    """Any HTTP request on 127.0.0.1: records it and answers ``status`` with ``headers``."""

    def __init__(self, status: int = 200, headers: dict | None = None, body: bytes = b"{}"):
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def strict(settings):
    """The policy of a deployment (DATABASE_URL set, EGRESS_ALLOW unset): nothing but public addresses."""
    settings.EGRESS_ALLOW = []
    return settings


# The policy --------------------------------------------------------------------------------------

@pytest.mark.parametrize("address, kind", [
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"), ("::ffff:169.254.169.254", "cloud metadata"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("100.64.0.1", "private"), ("fc00::1", "private"), ("93.184.215.14", None),
])
def test_every_address_has_its_category(address, kind):
    import ipaddress

    assert egress.category(ipaddress.ip_address(address)) == kind


def test_egress_allow_opens_loopback_and_private_but_never_metadata_or_link_local():
    networks, hosts, words = egress.parse_allow(["loopback", "10.0.0.0/8", "bot.internal", "169.254.0.0/16"])
    policy = egress.EgressPolicy(networks=networks, hosts=hosts, words=words)
    assert policy.refusal("x", 80, "127.0.0.1") is None
    assert policy.refusal("x", 80, "10.9.9.9") is None
    assert policy.refusal("bot.internal", 80, "192.168.0.7") is None  # allowed by its name
    assert policy.refusal("other.internal", 80, "192.168.0.7") == "private"
    assert policy.refusal("x", 80, "169.254.169.254") == "cloud metadata"  # no entry opens these
    assert policy.refusal("x", 80, "169.254.3.3") == "link-local"
    assert egress.EgressPolicy().refusal("x", 80, "127.0.0.1") == "loopback"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not a host!", "loopback,*.evil"])
def test_a_bad_egress_allow_stops_start_up_with_a_clear_message(value, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'assure.settings'; django.setup()"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SECRET_KEY": "x", "EGRESS_ALLOW": value, "ASSURE_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: EGRESS_ALLOW:" in result.stderr


def test_the_default_is_open_to_local_bots_only_on_the_embedded_setup(tmp_path):
    from cryptography.fernet import Fernet

    script = "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'assure.settings'; django.setup(); " \
             "from django.conf import settings; print(settings.EGRESS_ALLOW)"
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "x", "ASSURE_VAR_DIR": str(tmp_path),
            "ASSURE_SECRET_KEYS": Fernet.generate_key().decode()}
    embedded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=base)
    deployed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**base, "DATABASE_URL": "postgres://u@127.0.0.1:1/x"})
    assert embedded.stdout.strip() == "['loopback', 'private']", embedded.stderr
    assert deployed.stdout.strip() == "[]", deployed.stderr


# Saving a URL -----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_target_or_function_pointed_at_the_metadata_address_is_refused_when_saved(api, workspace):
    response = api.post("/api/v1/targets/", {
        "name": "Metadata", "channel": "chat", "kind": "http_json",
        "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/role",
        "request_template": {"text": "{{message}}"}, "response_path": "$.reply"}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "blocked by the egress policy" in json.dumps(response.json())

    agent = f.AgentFactory(workspace=workspace)
    response = api.post("/api/v1/functions/", {
        "agent": str(agent.pk), "name": "steal", "url": "http://169.254.169.254/latest/meta-data/",
        "parameters": {"type": "object", "properties": {}}}, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "blocked by the egress policy" in json.dumps(response.json())

    response = api.patch(f"/api/v1/agents/{agent.pk}/", {"llm_base_url": "http://[fe80::1]/v1"},
                         content_type="application/json")
    assert response.status_code == 400, response.content
    assert "link-local" in json.dumps(response.json())


@pytest.mark.django_db
def test_the_workspace_webhook_pointed_at_the_metadata_address_is_refused_when_saved(api, workspace, member_client):
    response = api.patch("/api/v1/workspace/", {"webhook_url": "http://169.254.169.254/latest/meta-data/"},
                         content_type="application/json")
    assert response.status_code == 400, response.content
    assert "blocked by the egress policy" in json.dumps(response.json())
    workspace.refresh_from_db()
    assert workspace.webhook_url == ""

    page = member_client.get(f"/admin/assure/workspace/{workspace.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and not isinstance(value, list)}
    data.update({"webhook_url": "http://[fe80::1]/hook", "name": workspace.name, "slug": workspace.slug})
    refused = member_client.post(f"/admin/assure/workspace/{workspace.pk}/change/", data)
    assert refused.status_code == 200 and "link-local" in refused.content.decode()
    workspace.refresh_from_db()
    assert workspace.webhook_url == ""

    accepted = api.patch("/api/v1/workspace/", {"webhook_url": "https://hooks.example.com/assure"},
                         content_type="application/json")
    assert accepted.status_code == 200 and accepted.json()["webhook_url"] == "https://hooks.example.com/assure"


@pytest.mark.django_db
def test_localhost_is_refused_when_saved_on_a_deployment_and_accepted_on_the_embedded_default(
    api, workspace, settings
):
    payload = {"name": "Local bot", "channel": "chat", "kind": "http_json", "url": "http://localhost:8080/chat",
               "request_template": {"text": "{{message}}"}, "response_path": "$.reply"}
    assert api.post("/api/v1/targets/", payload, content_type="application/json").status_code == 201
    settings.EGRESS_ALLOW = []
    response = api.post("/api/v1/targets/", {**payload, "name": "Local bot 2"}, content_type="application/json")
    assert response.status_code == 400
    assert "blocked by the egress policy: localhost is a loopback address" in json.dumps(response.json())


# Connections ------------------------------------------------------------------------------------

async def _post(url: str) -> int:
    session = egress.client_session()
    try:
        async with session.post(url, json={}, allow_redirects=False) as response:
            return response.status
    finally:
        await session.close()


def test_a_literal_loopback_address_is_refused_on_a_deployment_and_never_contacted(strict):
    server = RecordingServer()
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            asyncio.run(_post(server.url + "/chat"))
    finally:
        server.close()
    assert "blocked by the egress policy: 127.0.0.1 is a loopback address" in str(egress.refusal_in(caught.value))
    assert server.requests == []


def test_a_name_resolving_to_a_blocked_address_is_refused(strict):
    server = RecordingServer()
    port = server.url.rsplit(":", 1)[1]
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            asyncio.run(_post(f"http://localhost:{port}/chat"))
        with pytest.raises(Exception) as caught_httpx:
            with egress.http_client(timeout=5) as client:
                client.post(f"http://localhost:{port}/chat")
    finally:
        server.close()
    assert "localhost is a loopback address" in str(egress.refusal_in(caught.value))
    assert "localhost is a loopback address" in str(egress.refusal_in(caught_httpx.value))
    assert server.requests == []


def test_a_name_resolving_to_the_metadata_address_is_refused_even_with_everything_local_allowed(monkeypatch):
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "metadata.attacker.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        asyncio.run(_post("http://metadata.attacker.example/latest/meta-data/"))
    assert "cloud metadata" in str(egress.refusal_in(caught.value))
    with pytest.raises(Exception) as caught_httpx:
        with egress.http_client(timeout=5) as client:
            client.get("http://metadata.attacker.example/latest/meta-data/")
    assert "cloud metadata" in str(egress.refusal_in(caught_httpx.value))


def test_the_operators_demo_target_is_trusted_on_loopback(strict):
    server = RecordingServer()
    strict.DEMO_TARGET_URL = server.url + "/demo-target/chat/"
    try:
        assert asyncio.run(_post(server.url + "/demo-target/chat/")) == 200
    finally:
        server.close()
    assert server.requests == ["POST /demo-target/chat/"]


def test_a_probe_of_a_blocked_host_says_the_same_whether_something_listens_or_not(strict):
    listening = RecordingServer()
    closed = f"http://127.0.0.1:{free_port()}/hook"
    try:
        answers = []
        for url in (listening.url + "/hook", closed):
            with pytest.raises(sync.ProbeError) as caught:
                sync.probe(url=url, name="book", parameters={"type": "object"}, secret="s")
            answers.append(str(caught.value).replace(url, "URL"))
            assert caught.value.permanent
    finally:
        listening.close()
    assert answers[0] == answers[1]
    assert "blocked by the egress policy" in answers[0] and "refused" not in answers[0]
    assert listening.requests == []


def test_the_openai_client_neither_follows_a_redirect_nor_reaches_a_blocked_host():
    metadata = RecordingServer()
    redirector = RecordingServer(302, {"Location": metadata.url + "/latest/meta-data/"})
    target = {"channel": "chat", "kind": "openai_chat", "url": redirector.url + "/v1", "model": "m"}

    async def send():
        async with aiohttp.ClientSession() as http:
            connection = connection_for(target, ConnectionContext(session_id="s", http=http))
            try:
                await connection.send("hello")
            finally:
                await connection.close()

    try:
        with pytest.raises(TargetUnreachable) as caught:
            asyncio.run(send())
    finally:
        redirector.close()
        metadata.close()
    assert "HTTP 302" in str(caught.value)
    assert metadata.requests == []


# Caps -------------------------------------------------------------------------------------------

def test_a_reply_over_the_byte_cap_is_an_error_not_buffered():
    huge = b'{"reply": "' + b"x" * (300 * 1024) + b'"}'
    bot = FakeTarget(lambda message, n: (200, huge))
    target = {"channel": "chat", "kind": "http_json", "url": bot.url, "request_template": {"text": "{{message}}"},
              "response_path": "$.reply"}

    async def send():
        session = egress.client_session()
        try:
            connection = connection_for(target, ConnectionContext(session_id="s", http=session))
            return await connection.send("hi")
        finally:
            await session.close()

    try:
        with pytest.raises(Exception) as caught:
            asyncio.run(send())
    finally:
        bot.close()
    assert str(caught.value) == "reply over 256 KB"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_openai_chat_reply_over_the_byte_cap_is_an_error_not_buffered(declared):
    """An OpenAI-compatible target that answers a huge completion: the SDK's client stops reading at
    the cap, whether the size is declared or only seen as the chunks arrive."""
    body = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "' + b"z" * (300 * 1024) + b'"}}]}'

    async def completions(request):
        if declared:
            response = web.Response(body=body, content_type="application/json")
        else:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for start in range(0, len(body), 16384):
                await response.write(body[start:start + 16384])
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = AiohttpServer(app)
    target = {"channel": "chat", "kind": "openai_chat", "url": f"http://127.0.0.1:{server.port}/v1", "model": "m"}

    async def send():
        connection = connection_for(target, ConnectionContext(session_id="s", http=None))
        try:
            return await connection.send("hi")
        finally:
            await connection.close()

    try:
        with pytest.raises(ReplyTooLarge) as caught:
            asyncio.run(send())
    finally:
        server.close()
    assert str(caught.value) == "reply over 256 KB"
    assert caught.value.permanent


def test_cookies_a_bot_sets_come_back_within_its_run_and_never_with_another():
    """One jar per run: a bot that keeps its conversation in a cookie gets it back on every message
    of that run; another run on the same shared session (another workspace's) never sees it."""
    seen = []

    async def chat(request):
        body = await request.json()
        seen.append((body["session"], request.cookies.get("conversation")))
        response = web.json_response({"reply": "ok"})
        if "conversation" not in request.cookies:
            response.set_cookie("conversation", f"c-{body['session']}", path="/")
        return response

    app = web.Application()
    app.router.add_post("/chat", chat)
    server = AiohttpServer(app)
    target = {"channel": "chat", "kind": "http_json", "url": f"http://127.0.0.1:{server.port}/chat",
              "request_template": {"text": "{{message}}", "session": "{{session_id}}"}, "response_path": "$.reply"}

    async def converse():
        session = egress.client_session()
        try:
            first = connection_for(target, ConnectionContext(session_id="one", http=session))
            second = connection_for(target, ConnectionContext(session_id="two", http=session))
            for connection in (first, second, first, second):
                await connection.send("hello")
            for connection in (first, second):
                await connection.close()
        finally:
            await session.close()

    try:
        asyncio.run(converse())
    finally:
        server.close()
    assert seen == [("one", None), ("two", None), ("one", "c-one"), ("two", "c-two")]


def test_a_function_result_over_the_byte_cap_is_an_error_result():
    from runs.llm_caller import Function, LLMCaller

    async def big(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(40):  # chunked, no Content-Length: the cap is counted as it arrives
            await response.write(b"y" * 16384)
        return response

    app = web.Application()
    app.router.add_post("/hook", big)
    server = AiohttpServer(app)
    function = Function(name="lookup", description="", parameters={"type": "object"},
                        url=f"http://127.0.0.1:{server.port}/hook", secret="")

    async def call():
        session = egress.client_session()
        try:
            caller = LLMCaller(persona="p", language="en-US", llm={"base_url": "http://127.0.0.1:9/v1", "model": "m"},
                               functions=[function], channel="chat", http=session, run_id="r")
            try:
                return await caller._call_function(function, {})
            finally:
                await caller.client.close()
        finally:
            await session.close()

    try:
        result, status = asyncio.run(call())
    finally:
        server.close()
    assert (result, status) == ({"error": "function result reply over 256 KB"}, "error")


@pytest.mark.django_db(transaction=True)
def test_a_stored_turn_is_capped_with_a_marker():
    from runs.recorder import MAX_TURN_CHARS, TRUNCATED_MARKER, DbRecorder

    from django.utils import timezone

    run = f.RunFactory(status="running", stage="live", started_at=timezone.now())
    asyncio.run(DbRecorder(run.pk).turn(speaker="target", text="z" * 50_000, started_ms=0, ended_ms=1))
    stored = Turn.objects.get(run=run).text
    assert stored == "z" * MAX_TURN_CHARS + TRUNCATED_MARKER


# The LLM key ------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_server_key_goes_only_to_the_server_endpoint(settings, workspace):
    settings.LLM_BASE_URL, settings.LLM_API_KEY = "https://llm.operator.example/v1", "server-key"
    own = f.AgentFactory(workspace=workspace, llm_base_url="https://llm.tenant.example/v1")
    keyed = f.AgentFactory(workspace=workspace, llm_base_url="https://llm.tenant.example/v1", llm_api_key="tenant-key")
    plain = f.AgentFactory(workspace=workspace)
    assert (llm_settings(own)["base_url"], llm_settings(own)["api_key"]) == ("https://llm.tenant.example/v1", "")
    assert llm_settings(keyed)["api_key"] == "tenant-key"
    assert (llm_settings(plain)["base_url"], llm_settings(plain)["api_key"]) == (
        "https://llm.operator.example/v1", "server-key")


# Through a real worker --------------------------------------------------------------------------

def _start_worker(test_redis_url, django_db_blocker, **env):
    with django_db_blocker.unblock():
        return CeleryWorker(redis_url=test_redis_url, name=f"egress{free_port()}", env=env)


def _ended(run_id, timeout=40) -> Run:
    return wait_for(lambda: (r := Run.objects.get(pk=run_id)).status in TERMINAL and r, timeout,
                    message=f"run {run_id} to end")


@pytest.mark.django_db(transaction=True)
def test_a_redirect_to_the_metadata_service_is_not_followed(api, workspace, test_redis_url, django_db_blocker):
    metadata = RecordingServer(body=b'{"reply": "AccessKeyId: AKIA..."}')
    redirector = RecordingServer(302, {"Location": metadata.url + "/latest/meta-data/iam/security-credentials/role"})
    worker = _start_worker(test_redis_url, django_db_blocker)
    try:
        target = f.TargetFactory(workspace=workspace, url=redirector.url + "/chat", headers={"X-Api-Key": "secret"})
        scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
        path = f.PathFactory(scenario=scenario, script=[{"say": "hello"}, {"end_call": True}])
        run = _ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    finally:
        worker.stop()
        redirector.close()
        metadata.close()
    assert (run.status, run.failure_reason) == ("failed", "target_unreachable"), run.failure_detail
    assert "HTTP 302" in run.failure_detail
    assert redirector.requests == ["POST /chat"]
    assert metadata.requests == []
    assert "AKIA" not in "".join(Turn.objects.filter(run=run).values_list("text", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_loopback_target_is_refused_on_a_deployment_and_reached_on_the_embedded_default(
    api, workspace, test_redis_url, django_db_blocker
):
    bot = FakeTarget(lambda message, n: (200, {"reply": "hello"}))
    target = f.TargetFactory(workspace=workspace, url=bot.url)
    scenario = f.ScenarioFactory(workspace=workspace, target=target, criteria=[])
    path = f.PathFactory(scenario=scenario, script=[{"say": "hi"}, {"end_call": True}])
    try:
        worker = _start_worker(test_redis_url, django_db_blocker, EGRESS_ALLOW="")
        try:
            refused = _ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
        finally:
            worker.stop()
        assert bot.requests == []
        worker = _start_worker(test_redis_url, django_db_blocker, EGRESS_ALLOW="loopback,private")
        try:
            reached = _ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
        finally:
            worker.stop()
    finally:
        bot.close()
    assert (refused.status, refused.failure_reason) == ("failed", "target_unreachable")
    assert refused.failure_detail.startswith("blocked by the egress policy: 127.0.0.1 is a loopback address")
    assert reached.status == "completed", reached.failure_detail
    assert len(bot.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_an_agent_with_its_own_llm_endpoint_never_receives_the_server_key(
    api, workspace, test_redis_url, django_db_blocker
):
    def answer(messages):
        if "You judge a conversation" in messages[0]["content"]:
            return json.dumps({"verdict": "pass", "rationale": "fine", "evidence": [1]})
        if len(messages) < 3:
            return "Hello, I'd like a table."
        return {"content": None, "tool_calls": [{"name": "end_call", "arguments": {}}]}

    llm = FakeOpenAI(answer)
    bot = FakeTarget(lambda message, n: (200, {"reply": "Sure, for how many?"}))
    worker = _start_worker(test_redis_url, django_db_blocker, LLM_BASE_URL="http://127.0.0.1:9/v1",
                           LLM_API_KEY="server-secret-key")
    try:
        agent = f.AgentFactory(workspace=workspace, llm_base_url=llm.base_url, llm_model="fake")
        target = f.TargetFactory(workspace=workspace, url=bot.url)
        scenario = f.ScenarioFactory(workspace=workspace, agent=agent, target=target,
                                     criteria=[{"name": "Polite", "kind": "llm_judge", "rule": "The agent is polite."}])
        path = f.PathFactory(scenario=scenario, script=[])
        run = _ended(api.post(f"/api/v1/paths/{path.pk}/run/").json()["id"])
    finally:
        worker.stop()
        llm.close()
        bot.close()
    assert run.status == "completed", run.failure_detail
    judged = [r for r in llm.requests if "You judge" in r["body"]["messages"][0]["content"]]
    assert judged and len(llm.requests) > len(judged)  # both the caller and the judge asked it
    assert all("server-secret-key" not in json.dumps(r["headers"]) for r in llm.requests)
