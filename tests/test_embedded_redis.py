"""The embedded Redis starts and stops with the product."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from assure.embedded import EmbeddedRedis, EmbeddedRedisError, is_running, socket_path

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_redis_starts_answers_and_stops(tmp_path):
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket))
        client.set("k", "v")
        assert client.get("k") == b"v"
        pid = server.process.pid
        with pytest.raises(EmbeddedRedisError, match="already listening"):
            EmbeddedRedis(tmp_path).start()
    finally:
        server.stop()
    assert not is_running(server.socket)
    assert not server.socket.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_long_var_dir_gets_a_short_socket_path(tmp_path):
    deep = tmp_path / ("x" * 120)
    path = socket_path(deep)
    assert len(str(path)) < 100
    assert path == socket_path(deep)  # every process of one checkout finds the same server
    assert socket_path(tmp_path / "short") == tmp_path / "short" / "redis" / "redis.sock"


def test_channels_layer_and_celery_broker_work_over_the_socket(tmp_path):
    from celery import Celery
    from channels_redis.core import RedisChannelLayer
    from asgiref.sync import async_to_sync

    with EmbeddedRedis(tmp_path) as server:
        layer = RedisChannelLayer(hosts=[server.url])

        async def roundtrip():
            channel = await layer.new_channel()
            await layer.group_add("g", channel)
            await layer.group_send("g", {"type": "hello", "n": 1})
            return await layer.receive(channel)

        assert async_to_sync(roundtrip)() == {"type": "hello", "n": 1}

        app = Celery("t", broker=f"redis+socket://{server.socket}", set_as_current=False)
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.SimpleQueue("probe") as queue:
                queue.put({"x": 1})
                assert queue.get(timeout=5).payload == {"x": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_up_serves_the_product_and_ctrl_c_stops_everything(tmp_path):
    """`manage.py up` (what `make up` runs) on the embedded default, from an empty var dir."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(ASSURE_VAR_DIR=str(tmp_path), PORT=str(port), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--concurrency", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    up = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "AssureAgent is up" in line:
                up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert up.wait(120), "".join(lines)[-3000:]
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in output and "demo / demo" in output
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            login = http.get("/login/")
            assert login.status_code == 200
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            response = http.post(
                "/login/", data={"username": "demo", "password": "demo", "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"http://127.0.0.1:{port}/login/"},
            )
            assert response.status_code == 302, response.text[:500]
            admin = http.get("/admin/")
            assert admin.status_code == 200 and "Site administration" in admin.text
            assert http.get("/static/admin/css/base.css").status_code == 200
        sock = socket_path(tmp_path)
        assert is_running(sock)
        # The worker is connected to the embedded broker.
        deadline = time.monotonic() + 60
        while "ready." not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ready." in "".join(lines)
        redis_pid = int((tmp_path / "redis" / "redis.pid").read_text())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    reader.join(5)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    assert "Stopped." in "".join(lines)
    assert not is_running(sock)
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_make_up_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
        env.update(ASSURE_VAR_DIR=str(tmp_path), PORT=str(port))
        result = subprocess.run(
            [sys.executable, "manage.py", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"PORT={port + 1} make up" in result.stderr
