"""``genq demo``: the whole system on the embedded default, driven over HTTP like a client.

Starts services, API, worker and scheduler; creates a user with credits; submits a handful of
jobs to the built-in provider; prints one job's live events as they arrive (Server-Sent Events);
shows live progress; cancels one to show the refund; prints each job's outputs; receives each
job's signed webhook on a small receiver of its own, verifies it with ``standardwebhooks`` and
prints it; saves two to the library in a collection, publishes one and shows its share link
and the public feed; sets the user's storage quota to what the library takes and shows a third
save refused; signs a user in with a token it makes as an identity provider would (HS256,
its own secret); prints the balance before and after and the ledger; rotates the user's API
key, shows the audit log and the Prometheus metrics of the API and the worker; then stops
everything it started.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

import httpx
import jwt
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from genq.stack import Stack, open_log, pick_port
from shared.errors import GenqError
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from shared.types import TERMINAL_STATUSES, JobStatus

log = get_logger(__name__)

DEMO_CREDITS = 100
DEMO_JOBS: list[tuple[str, str, int]] = [
    ("local/sketch", "a lighthouse at dusk, ink wash", 2),
    ("local/poster", "a city of glass at sunrise", 1),
    ("local/sketch", "a red fox in fresh snow", 3),
    ("local/poster", "retro rocket launch, screen print", 2),
    ("local/sketch", "koi pond seen from above", 1),
    ("local/clip", "paper boats drifting on a pond", 1),
]
# Sign-in with a token as the product's identity provider would make it (HS256, shared secret).
DEMO_ISSUER = "https://auth.demo.genq.invalid/auth/v1"
DEMO_AUDIENCE = "authenticated"
DEMO_NEW_USER_CREDITS = 10
CANCELED_JOB = ("local/poster", "this one is canceled before it runs", 2)
EXT = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg", "video/mp4": "mp4"}


class DemoReceiver:
    """A webhook receiver on 127.0.0.1, as a client of genq would run one: it verifies every
    delivery with the ``standardwebhooks`` package and keeps it (``secret`` set once known)."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[tuple[dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    receiver.received.append((json.loads(body), verified))
                self.send_response(204 if verified else 400)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints what it received itself

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/genq-webhooks"

    def start(self) -> DemoReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def deliveries(self) -> list[tuple[dict[str, Any], bool]]:
        with self._lock:
            return list(self.received)


class Demo:
    """One run of the demo against a running stack."""

    def __init__(self, base_url: str, admin_token: str, out_dir: Path, out: TextIO,
                 receiver: DemoReceiver) -> None:
        self.receiver = receiver
        self.admin = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
        )
        self.client: httpx.Client | None = None
        self.user_id = ""
        self.out_dir = out_dir
        self.out = out

    def say(self, text: str = "") -> None:
        """Print a line."""
        print(text, file=self.out, flush=True)

    def _user(self) -> httpx.Client:
        assert self.client is not None
        return self.client

    def setup_user(self) -> None:
        """Create a user and grant credits through the admin API."""
        email = f"demo-{uuid.uuid4().hex[:8]}@example.com"
        user = _ok(self.admin.post("/v1/admin/users", json={"email": email}))
        grant = _ok(self.admin.post(
            f"/v1/admin/users/{user['id']}/credits",
            json={"amount": DEMO_CREDITS, "reason": "demo credits"},
            headers={"Idempotency-Key": f"demo-grant-{user['id']}"},
        ))
        self.user_id = user["id"]
        self.client = httpx.Client(
            base_url=str(self.admin.base_url),
            headers={"Authorization": f"Bearer {user['api_key']}"}, timeout=30,
        )
        self.say(f"user {email} created; granted {DEMO_CREDITS} credits "
                 f"(balance {grant['balance']})")
        self.receiver.secret = _ok(self._user().get("/v1/webhooks/secret"))["secret"]
        self.say(f"webhook receiver at {self.receiver.url}, verifying with the user's secret "
                 f"{self.receiver.secret[:10]}...")

    def credits(self) -> dict[str, Any]:
        """GET /v1/credits."""
        return _ok(self._user().get("/v1/credits"))

    def submit(self) -> tuple[list[str], str]:
        """Submit the demo jobs and the one to cancel; cancel it; return the ids."""
        ids = []
        for model, prompt, n in [*DEMO_JOBS, CANCELED_JOB]:
            job = _ok(self._user().post(
                "/v1/jobs", json={"model": model, "prompt": prompt, "num_outputs": n,
                                  "params": {}, "seed": 7, "webhook_url": self.receiver.url},
                headers={"Idempotency-Key": f"demo-{uuid.uuid4().hex}"},
            ))
            ids.append(job["id"])
            self.say(f"submitted {job['id']}  {model:<13} x{n}  "
                     f"reserved {job['cost']['reserved']}")
        canceled = ids[-1]
        resp = self._user().post(f"/v1/jobs/{canceled}/cancel")
        self.say(f"cancel {canceled}: HTTP {resp.status_code} -> {resp.json().get('status')}")
        return ids, canceled

    def follow(self, job_id: str, timeout_s: float = 60.0) -> list[str]:
        """Print one job's live events (GET /v1/jobs/{id}/events) as they arrive, until its
        final one ends the stream; returns their types."""
        self.say(f"live events of {job_id} (GET /v1/jobs/{{id}}/events):")
        types: list[str] = []
        fields: dict[str, str] = {}
        with self._user().stream("GET", f"/v1/jobs/{job_id}/events",
                                 timeout=timeout_s) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"GET /v1/jobs/{job_id}/events answered "
                                   f"{resp.status_code}")
            for line in resp.iter_lines():
                if line.startswith(":"):  # the heartbeat
                    continue
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if "data" in fields:
                    types.append(fields["event"])
                    self.say(f"  event {fields['id']:>4}  {fields['event']:<14} "
                             f"{_event_detail(fields['event'], json.loads(fields['data']))}"
                             .rstrip())
                fields = {}
        return types

    def watch(self, ids: list[str], timeout_s: float = 180.0) -> dict[str, dict[str, Any]]:
        """Poll until every job is terminal, drawing a live table."""
        live = self.out.isatty()
        seen: dict[str, str] = {}
        jobs: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        drawn = 0
        while time.monotonic() < deadline:
            for job_id in ids:
                jobs[job_id] = _ok(self._user().get(f"/v1/jobs/{job_id}"))
            done = sum(j["status"] in TERMINAL_STATUSES for j in jobs.values())
            if live:
                if drawn:
                    self.out.write(f"\x1b[{drawn}A")
                lines = [_bar(done, len(ids))] + [_row(j) for j in jobs.values()]
                self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
                self.out.flush()
                drawn = len(lines)
            else:
                for job_id, job in jobs.items():
                    if seen.get(job_id) != job["status"]:
                        seen[job_id] = job["status"]
                        self.say(f"{_bar(done, len(ids))}  {_row(job)}")
            if done == len(ids):
                return jobs
            time.sleep(0.2)
        raise TimeoutError("jobs did not finish in time")

    def report(self, jobs: dict[str, dict[str, Any]]) -> None:
        """Each job's status, cost and output files (downloaded through the API)."""
        self.say()
        for job_id, job in jobs.items():
            cost = job["cost"]
            self.say(f"job {job_id}  {job['model']}  {job['status']}  reserved "
                     f"{cost['reserved']} captured {cost['captured']} refunded "
                     f"{cost['refunded']}")
            if job.get("error"):
                self.say(f"    error: {job['error']['code']}: {job['error']['message']}")
            for asset in job.get("outputs", []):
                resp = self._user().get(f"/v1/assets/{asset['id']}/content")
                resp.raise_for_status()
                mime = resp.headers.get("content-type", "").split(";")[0]
                name = f"{asset['index']}.{EXT.get(mime, 'bin')}"
                path = self.out_dir / job_id / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(resp.content)
                dims = f" {asset['width']}x{asset['height']}" if asset.get("width") else ""
                video = ""
                if asset.get("duration_seconds") is not None:
                    video = f", {asset['duration_seconds']:.2f} s at {asset.get('fps') or 0:g} fps"
                self.say(f"    output {path}  {mime}{dims}  {len(resp.content)} bytes{video}")
                poster = asset.get("variants", {}).get("poster")
                if poster:
                    self._poster(path, poster)

    def webhooks(self, ids: list[str], timeout_s: float = 30.0) -> bool:
        """Wait for each job's ``job.completed`` delivery and print it; True if there is
        exactly one per job and every delivery verified."""
        deadline = time.monotonic() + timeout_s
        while (len(self.receiver.deliveries()) < len(ids)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        received = self.receiver.deliveries()
        self.say()
        for event, verified in received:
            job = event["data"]
            self.say(f"webhook {event['type']} {job['id']}  {job['status']:<9}  signature "
                     f"{'verified' if verified else 'NOT VERIFIED'}  (webhook-id {event['id']})")
        return (sorted(e["data"]["id"] for e, _ in received) == sorted(ids)
                and all(v and e["type"] == "job.completed" for e, v in received))

    def _poster(self, output: Path, poster: dict[str, Any]) -> None:
        """Download a video's poster (its first frame, WebP) next to it."""
        resp = self._user().get(poster["url"])
        resp.raise_for_status()
        path = output.with_name(f"{output.stem}.poster.webp")
        path.write_bytes(resp.content)
        self.say(f"    poster {path}  image/webp {poster['width']}x{poster['height']}  "
                 f"{len(resp.content)} bytes")

    def sign_in(self, secret: str) -> bool:
        """Sign a user in with a token made here, as the product's identity provider would:
        the first request creates the user with its starting credits, the next is the same
        user, a changed token is refused. True if all three went as expected."""
        sub = str(uuid.uuid4())
        now = int(time.time())
        claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": sub, "iat": now,
                  "exp": now + 3600, "email": f"signed-in-{sub[:8]}@example.com"}
        token = jwt.encode(claims, secret, algorithm="HS256")
        session = httpx.Client(base_url=str(self.admin.base_url),
                               headers={"Authorization": f"Bearer {token}"}, timeout=30)
        me = _ok(session.get("/v1/me"))
        balance = _ok(session.get("/v1/credits"))["balance"]
        identity = me["identities"][0]
        self.say(f"sign-in: a token for sub {identity['subject']} -> user {me['id']} created "
                 f"({me['email']}), balance {balance} (starting credits)")
        again = jwt.encode({**claims, "iat": now + 1}, secret, algorithm="HS256")
        second = _ok(self.admin.get("/v1/me", headers={"Authorization": f"Bearer {again}"}))
        balance_again = _ok(session.get("/v1/credits"))["balance"]
        self.say(f"sign-in: a new token for the same sub -> the same user: "
                 f"{second['id'] == me['id']}, balance {balance_again}")
        header, _, signature = token.split(".")
        forged = jwt.encode({**claims, "sub": "someone-else"}, "x" * 32, algorithm="HS256")
        tampered = f"{header}.{forged.split('.')[1]}.{signature}"
        refused = self.admin.get("/v1/me", headers={"Authorization": f"Bearer {tampered}"})
        error = refused.json()["error"]
        self.say(f"sign-in: the token with its payload changed -> HTTP {refused.status_code} "
                 f"{error['code']} ({error['details']['reason']})")
        return (balance == DEMO_NEW_USER_CREDITS and second["id"] == me["id"]
                and balance_again == DEMO_NEW_USER_CREDITS and refused.status_code == 401
                and error["code"] == "invalid_token")

    def library(self, jobs: dict[str, dict[str, Any]]) -> bool:
        """Save two outputs to the library in a collection, publish one, and show its share
        link and the public feed (read with no credentials). Returns whether all adds up."""
        outputs = [a for j in jobs.values() if j["status"] == JobStatus.SUCCEEDED
                   for a in j.get("outputs", []) if a["type"] == "image"][:3]
        collection = _ok(self._user().post("/v1/collections", json={
            "name": f"Demo favourites {uuid.uuid4().hex[:6]}"}))
        items = [_ok(self._user().post("/v1/library", json={
            "asset_id": a["id"], "collection_id": collection["id"], "tags": ["demo"]}))
            for a in outputs[:2]]
        self.say()
        for item in items:
            self.say(f"saved to library {item['id']}  short id {item['short_id']}  "
                     f"{item['asset']['mime_type']} {item['asset']['size_bytes']} bytes")
        shown = _ok(self._user().patch(f"/v1/library/{items[0]['id']}", json={
            "visibility": "public", "title": items[0]["prompt"]}))
        count = _ok(self._user().get(f"/v1/collections/{collection['id']}"))["asset_count"]
        self.say(f"collection {collection['name']!r}: {count} items")
        base = str(self.admin.base_url).rstrip("/")
        self.say(f"published {shown['short_id']}; share link {base}/v1/shared/"
                 f"{shown['short_id']}")
        with httpx.Client(base_url=base, timeout=30) as anyone:
            shared = _ok(anyone.get(f"/v1/shared/{shown['short_id']}"))
            feed = _ok(anyone.get("/v1/feed", params={"limit": 5}))["data"]
        self.say("public feed (newest first):")
        for entry in feed:
            self.say(f"  {entry['short_id']}  {entry['title'] or '-'}  "
                     f"{entry['asset']['mime_type']}")
        return (len(items) == 2 and count == 2 and shared["short_id"] == shown["short_id"]
                and any(e["short_id"] == shown["short_id"] for e in feed)
                and len(outputs) == 3 and self._storage_quota(outputs[2]))

    def _storage_quota(self, third: dict[str, Any]) -> bool:
        """An admin sets the user's storage quota to what their library takes: saving a third
        output is refused. Returns whether it was, and nothing was saved."""
        used = _ok(self._user().get("/v1/me"))["storage"]["used_bytes"]
        storage = _ok(self.admin.put(f"/v1/admin/users/{self.user_id}/storage-quota",
                                     json={"quota_bytes": used}))["storage"]
        self.say(f"storage quota set to {storage['quota_bytes']} bytes "
                 f"({storage['quota_source']}'s own); the library takes {storage['used_bytes']}")
        refused = self._user().post("/v1/library", json={"asset_id": third["id"]})
        code = refused.json()["error"]["code"] if refused.status_code >= 400 else "-"
        self.say(f"saving a third output -> HTTP {refused.status_code} {code}")
        after = _ok(self._user().get("/v1/me"))["storage"]["used_bytes"]
        return (refused.status_code == 403 and code == "storage_quota_exceeded"
                and after == used == storage["used_bytes"])

    def rotate_key(self) -> bool:
        """Make a new API key, revoke the old one (refused at once), go on with the new one.
        True if the old key is refused and the new one works."""
        user = self._user()
        old_key = user.headers["Authorization"]
        keys = _ok(user.get("/v1/me/keys"))["data"]
        new = _ok(user.post("/v1/me/keys"))
        revoked = user.delete(f"/v1/me/keys/{keys[0]['id']}",
                              headers={"Authorization": f"Bearer {new['api_key']}"})
        refused = user.get("/v1/credits", headers={"Authorization": old_key})
        user.headers["Authorization"] = f"Bearer {new['api_key']}"
        works = user.get("/v1/credits")
        self.say(f"key rotation: new key {new['prefix']}... made; old key {keys[0]['prefix']}... "
                 f"revoked (HTTP {revoked.status_code}), now HTTP {refused.status_code}; the "
                 f"new one HTTP {works.status_code}")
        audit = _ok(self.admin.get("/v1/admin/audit", params={"limit": 3}))["data"]
        self.say("audit log (newest first):")
        for entry in audit:
            amounts = ("" if entry["amount_before"] is None
                       else f"  {entry['amount_before']} -> {entry['amount_after']}")
            self.say(f"  {entry['actor']:<6} {entry['action']:<14} {entry['target_type'] or '-'}"
                     f"{amounts}")
        return (revoked.status_code == 204 and refused.status_code == 401
                and works.status_code == 200)

    def metrics(self, worker_url: str | None, jobs: dict[str, dict[str, Any]]) -> bool:
        """A few lines of the API's and the worker's /metrics; True if the worker's counters
        match the jobs (its credit counters catch up moments after the last job)."""
        finished = sum(1 for j in jobs.values() if j["status"] == JobStatus.SUCCEEDED)
        captured = sum(j["cost"]["captured"] for j in jobs.values())
        api_text = self.admin.get("/metrics").text
        shown = [line for line in api_text.splitlines()
                 if line.startswith(("genq_jobs_submitted_total", "genq_credits_reserved_total"))]
        worker_text = ""
        deadline = time.monotonic() + 10
        while worker_url is not None:
            worker_text = httpx.get(worker_url, timeout=10).text
            if (_metric(worker_text, "genq_credits_captured_total") == captured
                    or time.monotonic() > deadline):
                break
            time.sleep(0.2)
        shown += [line for line in worker_text.splitlines()
                  if line.startswith(("genq_jobs_finished_total", "genq_credits_captured_total"))]
        self.say("metrics (API, then worker):")
        for line in shown:
            self.say(f"  {line}")
        return (worker_url is not None
                and _metric(worker_text, "genq_credits_captured_total") == captured
                and _metric(worker_text, "genq_jobs_finished_total", 'status="succeeded"')
                == finished)

    def ledger(self) -> list[dict[str, Any]]:
        """The user's ledger, oldest first."""
        body = _ok(self._user().get("/v1/credits/ledger", params={"limit": 100}))
        return list(reversed(body["data"]))


def _ok(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: "
                           f"HTTP {resp.status_code} {resp.text}")
    body: dict[str, Any] = resp.json()
    return body


def _event_detail(event: str, job: dict[str, Any]) -> str:
    """What an event says beyond its type."""
    if event == "job.queued" and job["queue"] is not None:
        return f"queue position {job['queue']['position']}"
    if event == "job.output":
        return f"output {job['outputs_staged']} of {job['num_outputs']}"
    if event == "job.succeeded":
        return f"{len(job['outputs'])} outputs, {job['cost']['captured']} credits captured"
    if job["error"] is not None:
        return f"{job['error']['code']}: {job['error']['message']}"
    return ""
def _metric(text: str, name: str, label: str = "") -> float:
    """The sum of a series' samples in a /metrics text (those whose labels include ``label``)."""
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if (series == name or series.startswith(name + "{")) and label in series:
            total += float(value)
    return total


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // total
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done"


def _row(job: dict[str, Any]) -> str:
    # A running job counts the outputs made so far; a finished one those it kept.
    outputs = (job["outputs_staged"] if job["status"] == JobStatus.RUNNING
               else len(job.get("outputs", [])))
    return (f"  {job['id']}  {job['model']:<13} {job['status']:<10} "
            f"outputs {outputs}/{job['num_outputs']}")


def run_demo(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 if every job ended as expected and the credits add up.

    ``out`` shows the demo alone: this process's log lines go to ``demo.log`` in the log folder,
    next to those of the processes it starts (``genq migrate`` included). A failure is said on
    standard error, naming the log folder.
    """
    log_dir = settings.data_dir / "logs"
    # Open for the rest of the process: loggers keep the stream they first wrote to.
    log_stream = os.fdopen(open_log(log_dir, "demo"), "a", buffering=1)
    configure_logging(settings.log_level, settings.log_format, stream=log_stream)
    try:
        return _run_demo(settings, out, log_dir)
    except GenqError:
        raise  # the command line says it
    except Exception as exc:
        log.exception("demo_failed")
        print(f"genq demo failed: {type(exc).__name__}: {exc} (the logs are in {log_dir})",
              file=sys.stderr, flush=True)
        return 1


def _run_demo(settings: Settings, out: TextIO, log_dir: Path) -> int:
    admin_token = (
        settings.admin_token.get_secret_value() if settings.admin_token
        else secrets.token_urlsafe(24)
    )
    jwt_secret = secrets.token_urlsafe(32)
    receiver = DemoReceiver().start()
    extra_env = {"GENQ_ADMIN_TOKEN": admin_token,
                 # The demo's webhook receiver listens on 127.0.0.1.
                 "GENQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
                 # The demo's own identity provider: tokens it signs with this secret.
                 "GENQ_JWT_SECRET": jwt_secret, "GENQ_JWT_ISSUER": DEMO_ISSUER,
                 "GENQ_JWT_AUDIENCE": DEMO_AUDIENCE,
                 "GENQ_NEW_USER_CREDITS": str(DEMO_NEW_USER_CREDITS)}
    if settings.local_latency_s == 0:
        # Slow enough to watch, fast enough to wait for.
        extra_env["GENQ_LOCAL_LATENCY_S"] = "1.0"
    if settings.metrics_port is None:
        # The worker and the scheduler serve /metrics too, each on a free port.
        settings = settings.model_copy(update={"metrics_port": 0})
    stack = Stack(settings, host="127.0.0.1", port=pick_port(0), extra_env=extra_env,
                  log_dir=log_dir)
    print(f"starting genq (data in {settings.data_dir.resolve()}, logs in "
          f"{log_dir.resolve()}) ...", file=out, flush=True)
    stack.start()
    try:
        stack.wait_ready()
        print(f"API ready at {stack.base_url}", file=out, flush=True)
        demo = Demo(stack.base_url, admin_token, settings.data_dir / "demo-output", out,
                    receiver)
        demo.setup_user()
        before = demo.credits()
        ids, canceled = demo.submit()
        followed = demo.follow(ids[0])
        jobs = demo.watch(ids)
        demo.report(jobs)
        webhooks_ok = demo.webhooks(ids)
        library_ok = demo.library(jobs)
        after = demo.credits()
        captured = sum(j["cost"]["captured"] for j in jobs.values())
        demo.say()
        demo.say(f"balance before {before['balance']} (reserved {before['reserved']}), "
                 f"after {after['balance']} (reserved {after['reserved']}); "
                 f"captured {captured}")
        demo.say("ledger:")
        demo.say(f"  {'kind':<8} {'amount':>6} {'held':>5} {'balance':>8}  job")
        for entry in demo.ledger():
            demo.say(f"  {entry['kind']:<8} {entry['amount']:>+6} {entry['reserved_delta']:>+5} "
                     f"{entry['balance_after']:>8}  {entry.get('job_id') or '-'}")
        demo.say("  (amount: change to the spendable balance; held: change to the credits "
                 "reserved for running jobs; a capture spends held credits)")
        demo.say()
        rotated = demo.rotate_key()
        metrics_ok = demo.metrics(stack.metrics_urls().get("worker"), jobs)
        demo.say()
        signed_in = demo.sign_in(jwt_secret)
        ok = (
            signed_in
            and all(jobs[i]["status"] == JobStatus.SUCCEEDED for i in ids if i != canceled)
            and jobs[canceled]["status"] == JobStatus.CANCELED
            and jobs[canceled]["cost"]["captured"] == 0
            and after["balance"] == before["balance"] - captured
            and after["reserved"] == 0
            and library_ok
            and followed == ["job.queued", "job.started",
                             *["job.output"] * DEMO_JOBS[0][2], "job.succeeded"]
            and rotated
            and metrics_ok
            and webhooks_ok
        )
        demo.say("demo finished: " + ("everything adds up" if ok else "UNEXPECTED STATE"))
        return 0 if ok else 1
    finally:
        stack.stop()
        receiver.stop()
        print("stopped genq and its embedded servers", file=out, flush=True)
