"""A Python client for fwpd, written from docs/PROTOCOL.md (pyzmq only).

    from fwp_client import Client
    c = Client("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556")
    job = c.submit(preset="retrieval-update", parameters={"keys": 8})["job"]
    for event in c.follow(job["id"]):
        print(event)
"""
import json
import time

import zmq

VERSION = b"FWP1"
FINAL_STATES = {"succeeded", "failed", "cancelled"}


class FwpError(Exception):
    """An error reply: `code` is stable, `message` is for people."""

    def __init__(self, code, message, details=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


class Unreachable(Exception):
    """No reply within the timeout."""


class Client:
    def __init__(self, endpoint="tcp://127.0.0.1:5555", events_endpoint="tcp://127.0.0.1:5556",
                 timeout=5.0, server_key=None, public_key=None, secret_key=None):
        self.context = zmq.Context()
        self.endpoint = endpoint
        self.events_endpoint = events_endpoint
        self.timeout = timeout
        self.curve = (server_key, public_key, secret_key) if server_key else None
        self.socket = self._socket(zmq.DEALER)
        self.socket.connect(endpoint)

    def _socket(self, kind):
        s = self.context.socket(kind)
        s.linger = 0
        if self.curve:
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = (k.encode() if isinstance(k, str) else k for k in self.curve)
        return s

    def close(self):
        self.socket.close()
        self.context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, command, body=None, raw_frames=False):
        """Sends one command; returns the reply body (and the attachment frame when raw_frames)."""
        self.socket.send_multipart([VERSION, command.encode(), json.dumps(body or {}).encode()])
        if not self.socket.poll(int(self.timeout * 1000)):
            # A DEALER keeps unanswered replies queued; start afresh so later replies stay in step.
            self.socket.close()
            self.socket = self._socket(zmq.DEALER)
            self.socket.connect(self.endpoint)
            raise Unreachable(f"no reply from {self.endpoint} within {self.timeout} s")
        frames = self.socket.recv_multipart()
        if len(frames) < 3 or frames[0] != VERSION:
            raise FwpError("bad_reply", f"malformed reply: {frames[:2]!r}")
        payload = json.loads(frames[2])
        if frames[1] == b"error":
            raise FwpError(payload.get("code"), payload.get("message"), payload.get("details"))
        if raw_frames:
            return payload, (frames[3] if len(frames) > 3 else None)
        return payload

    def submit(self, task=None, preset=None, parameters=None, priority=None, idempotency_key=None, max_attempts=None,
               slurm=None):
        body = {"task": task, "preset": preset, "parameters": parameters, "priority": priority,
                "idempotency_key": idempotency_key, "max_attempts": max_attempts, "slurm": slurm}
        return self.request("submit", {k: v for k, v in body.items() if v is not None})

    def status(self, job):
        return self.request("status", {"job": job})

    def list(self, state=None, after=0, limit=100, sweep=None):
        body = {"after": after, "limit": limit}
        if state:
            body["state"] = state
        if sweep is not None:
            body["sweep"] = sweep
        return self.request("list", body)

    def cancel(self, job):
        return self.request("cancel", {"job": job})

    def sweep(self, task=None, preset=None, parameters=None, grid=None, random=None, seeds=None, priority=None,
              max_running=None, idempotency_key=None, max_attempts=None, slurm=None):
        """Queues a sweep: one job per point of `grid` ({name: [values]}) crossed with `random`
        ({"count": n, "seed": s, "ranges": {name: {"min", "max", "log"} or {"values": [...]}}}) and
        `seeds` (a count). Returns {"sweep": Sweep, "created": bool}."""
        body = {"task": task, "preset": preset, "parameters": parameters, "grid": grid, "random": random,
                "seeds": seeds, "priority": priority, "max_running": max_running,
                "idempotency_key": idempotency_key, "max_attempts": max_attempts, "slurm": slurm}
        return self.request("sweep", {k: v for k, v in body.items() if v is not None})

    def token(self, role=None, principal=None):
        """A dashboard token for this client's principal (or, for an admin, `principal`) with its
        role or a lesser one: {"id", "token", "principal", "role", "dashboard"}."""
        body = {}
        if role is not None:
            body["role"] = role
        if principal is not None:
            body["principal"] = principal
        return self.request("token", body)

    def revoke_token(self, token_id):
        return self.request("token", {"revoke": token_id})

    def sweep_status(self, sweep):
        """{"sweep": Sweep, "points": [{"job", "values", "state", "attempt", "result"?, "error"?}]}"""
        return self.request("sweep_status", {"sweep": sweep})

    def cancel_sweep(self, sweep):
        return self.request("cancel", {"sweep": sweep})

    def wait_sweep(self, sweep, poll=0.5, timeout=None):
        """Polls until no point is queued or running; returns the final sweep_status."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            status = self.sweep_status(sweep)
            if status["sweep"]["state"] != "running":
                return status
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"sweep {sweep} still running")
            time.sleep(poll)

    def events(self, job, after=0, limit=1000):
        return self.request("events", {"job": job, "after": after, "limit": limit})["events"]

    def checkpoints(self, job):
        return self.request("checkpoints", {"job": job})["checkpoints"]

    def export(self, job, best=False, checkpoint=None):
        """Returns (checkpoint info, file bytes)."""
        body = {"job": job, "best": best}
        if checkpoint is not None:
            body["checkpoint"] = checkpoint
        return self.request("export", body, raw_frames=True)

    def tasks(self):
        return self.request("tasks")

    def health(self):
        return self.request("health")

    def metrics(self):
        return self.request("metrics")["text"]

    def follow(self, job, idle=2.0):
        """Yields the job's events once each, in order, history first, until a final state."""
        sub = self._socket(zmq.SUB)
        topic = f"job.{job}".encode()
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(self.events_endpoint)
        last = 0
        try:
            def history():
                nonlocal last
                while True:
                    batch = self.events(job, after=last, limit=1000)
                    for e in batch:
                        if e["seq"] == last + 1:
                            last = e["seq"]
                            yield e
                    if len(batch) < 1000:
                        return

            for e in history():
                yield e
                if e["kind"] == "state" and e.get("state") in FINAL_STATES:
                    return
            quiet = time.monotonic()
            while True:
                if sub.poll(250):
                    frame_topic, body = sub.recv_multipart()
                    if frame_topic != topic:
                        continue
                    quiet = time.monotonic()
                    e = json.loads(body)
                    if e["seq"] <= last:
                        continue
                    batch = [e] if e["seq"] == last + 1 else list(history())
                    if e["seq"] == last + 1:
                        last = e["seq"]
                    for x in batch:
                        yield x
                        if x["kind"] == "state" and x.get("state") in FINAL_STATES:
                            return
                elif time.monotonic() - quiet > idle:
                    for x in history():
                        yield x
                        if x["kind"] == "state" and x.get("state") in FINAL_STATES:
                            return
                    quiet = time.monotonic()
        finally:
            sub.close()
