"""Tests of the Python client against a real fwpd (started on free loopback ports)."""
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fwp_client import Client, FwpError, Unreachable  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FWPD = os.environ.get("FWPD_BIN", os.path.join(ROOT, ".build", "release", "fwpd"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon():
    state = tempfile.mkdtemp(prefix="fwpd-py-")
    req, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    log = open(os.path.join(state, "log"), "w")
    proc = subprocess.Popen([FWPD, "--state-dir", state, "--request-endpoint", req, "--publish-endpoint", pub, "--http-address", "127.0.0.1:0",
                             "--tasks-dir", os.path.join(ROOT, "tasks"), "--threads-per-job", "1"], stdout=log, stderr=log)
    client = Client(req, pub, timeout=0.3)
    for _ in range(100):
        try:
            client.health()
            break
        except Unreachable:
            time.sleep(0.05)
    client.timeout = 10
    yield client
    client.close()
    proc.terminate()
    assert proc.wait(30) == 0


def tiny(**extra):
    p = {"keys": 6, "key_size": 16, "rule": "delta", "attention": "linear", "max_steps": 200, "eval_every": 50,
         "target_loss": 0, "batch": 8}
    p.update(extra)
    return p


def test_health_and_tasks(daemon):
    h = daemon.health()
    assert h["status"] == "ok" and h["workers"] == 1
    t = daemon.tasks()
    assert {m["name"] for m in t["modules"]} == {"retrieval", "lm", "eval", "generate", "exec"}
    assert "retrieval-update" in {p["name"] for p in t["presets"]}
    keys = next(p for m in t["modules"] if m["name"] == "retrieval" for p in m["parameters"] if p["name"] == "keys")
    assert keys["type"] == "integer" and keys["default"] == 20 and keys["minimum"] == 2


def test_submit_and_follow_to_success(daemon):
    job = daemon.submit(task="retrieval", parameters=tiny())["job"]
    events = list(daemon.follow(job["id"]))
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "state" and events[-1]["state"] == "succeeded"
    assert [e["step"] for e in events if e["kind"] == "eval"] == [50, 100, 150, 200]
    assert daemon.status(job["id"])["result"]["steps"] == 200


def test_preset_with_overrides_and_priority(daemon):
    reply = daemon.submit(preset="retrieval-update", parameters={"keys": 5, "max_steps": 10}, priority=7)
    job = reply["job"]
    assert reply["created"] and job["preset"] == "retrieval-update" and job["priority"] == 7
    assert job["parameters"]["setting"] == 2 and job["parameters"]["keys"] == 5


def test_invalid_parameter_is_named(daemon):
    with pytest.raises(FwpError) as e:
        daemon.submit(task="retrieval", parameters={"keys": 1})
    assert e.value.code == "invalid_parameter" and e.value.details == {"parameter": "keys"}
    with pytest.raises(FwpError) as e:
        daemon.submit(task="nothing")
    assert e.value.code == "unknown_task"
    with pytest.raises(FwpError) as e:
        daemon.status(10 ** 9)
    assert e.value.code == "not_found"
    with pytest.raises(FwpError) as e:
        daemon.request("frobnicate")
    assert e.value.code == "unknown_command"
    with pytest.raises(FwpError) as e:
        daemon.request("status", {"job": "seven"})
    assert e.value.code == "invalid_request"


def test_idempotency_key(daemon):
    a = daemon.submit(task="retrieval", parameters=tiny(max_steps=5), idempotency_key="py-once")
    b = daemon.submit(task="retrieval", parameters=tiny(max_steps=5), idempotency_key="py-once")
    assert a["created"] and not b["created"] and a["job"]["id"] == b["job"]["id"]


def test_cancel_and_export(daemon):
    job = daemon.submit(task="retrieval", parameters=tiny(max_steps=10 ** 6))["job"]
    deadline = time.time() + 30
    while not daemon.checkpoints(job["id"]) and time.time() < deadline:
        time.sleep(0.05)
    info, data = daemon.export(job["id"])
    assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["size"]
    daemon.cancel(job["id"])
    states = [e.get("state") for e in daemon.follow(job["id"]) if e["kind"] == "state"]
    assert states[-1] == "cancelled"


def test_list_pages(daemon):
    first = daemon.list(limit=2)
    assert len(first["jobs"]) == 2 and first["next"] == first["jobs"][-1]["id"]
    rest = daemon.list(after=first["next"], limit=1000)
    ids = [j["id"] for j in first["jobs"] + rest["jobs"]]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def test_metrics_text(daemon):
    text = daemon.metrics()
    assert "fwpd_requests_total" in text and "# TYPE" in text


def test_sweep_runs_every_point_and_names_bad_entries(daemon):
    fixed = tiny(max_steps=20, eval_every=10)
    del fixed["keys"], fixed["rule"]  # swept
    reply = daemon.sweep(task="retrieval", parameters=fixed,
                         grid={"keys": [6, 8], "rule": ["sum", "delta"]}, seeds=2, max_running=2)
    sweep = reply["sweep"]
    assert reply["created"] and sweep["points"] == 8 and sweep["swept"] == ["keys", "rule", "seed"]
    assert len(daemon.list(sweep=sweep["id"], limit=100)["jobs"]) == 8
    status = daemon.wait_sweep(sweep["id"], timeout=120)
    assert status["sweep"]["counts"] == {"succeeded": 8}
    assert sorted((p["values"]["keys"], p["values"]["rule"], p["values"]["seed"]) for p in status["points"]) == \
        sorted((k, r, s) for k in (6, 8) for r in ("sum", "delta") for s in (1, 2))
    assert all("best_eval_loss" in p["result"] for p in status["points"])
    with pytest.raises(FwpError) as e:
        daemon.sweep(task="retrieval", parameters=fixed, grid={"keys": [6, "lots"]})
    assert e.value.code == "invalid_parameter" and e.value.details["entry"] == "grid.keys[1]"


def test_dashboard_token(daemon):
    import json as _json
    import urllib.error
    import urllib.request
    url = None
    for _ in range(100):  # the HTTP server starts beside the ZeroMQ one
        url = daemon.health().get("dashboard")
        if url:
            break
        time.sleep(0.05)
    made = daemon.token(role="viewer")
    assert made["role"] == "viewer" and made["dashboard"] == url and made["token"].startswith("fwp_")

    def whoami():
        request = urllib.request.Request(url + "api/whoami", headers={"Authorization": "Bearer " + made["token"]})
        with urllib.request.urlopen(request, timeout=5) as r:
            return _json.loads(r.read())

    assert whoami()["role"] == "viewer"
    with pytest.raises(FwpError) as e:
        daemon.token(role="admin")
    assert e.value.code == "forbidden"
    daemon.revoke_token(made["id"])
    with pytest.raises(urllib.error.HTTPError) as refused:
        whoami()
    assert refused.value.code == 401
