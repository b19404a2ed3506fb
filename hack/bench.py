#!/usr/bin/env python3
"""Benchmark driver for hack/bench.sh (standard library only).

Talks to the API server directly (bearer token), creates N RunaiCredentials
sharing K credentials Secrets before the controller starts, then measures:
cold start to all Ready, token requests, RSS, the API server's own request
counters (writes and reads per RunaiCredential), 60 s of steady state, a
forced refresh, a restart with everything fresh, and apply-to-Ready of single
new RunaiCredentials while the N exist.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

GROUP = "tokensync.dev"
VERSION = "v1alpha1"


def say(text):
    print(f"[bench] {text}", file=sys.stderr, flush=True)


class Api:
    """A tiny Kubernetes API client: one keep-alive connection per thread."""

    def __init__(self, server, token, ca):
        url = urllib.parse.urlparse(server)
        self.host, self.port = url.hostname, url.port or 443
        self.token = token
        self.context = ssl.create_default_context(cafile=ca)
        self.local = threading.local()

    def connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)
            self.local.conn = conn
        return conn

    def request(self, method, path, body=None, content_type="application/json"):
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in range(5):
            try:
                conn = self.connection()
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                if response.status == 429 or response.status >= 500:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                return response.status, payload
            except (http.client.HTTPException, OSError):
                self.local.conn = None
                time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path} kept failing")

    def json(self, method, path, body=None, content_type="application/json"):
        status, payload = self.request(method, path, body, content_type)
        if status >= 300 and status != 409:
            raise RuntimeError(f"{method} {path}: {status} {payload[:300]!r}")
        return json.loads(payload) if payload else {}

    def metrics(self, series="apiserver_request_total"):
        """A counter of the API server, summed by (verb, resource, subresource)."""
        _, payload = self.request("GET", "/metrics")
        counts = {}
        pattern = re.compile(r"^" + series + r"\{(.*)\} ([0-9.e+]+)$")
        for line in payload.decode().splitlines():
            m = pattern.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
            counts[key] = counts.get(key, 0) + float(m.group(2))
        return counts


def cpu_seconds_of(pid):
    """User and system CPU seconds a process has used (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def others_cpu(state):
    """CPU seconds of the API server, etcd and the stand-in, by name."""
    used = {}
    for name in ("kube-apiserver", "etcd", "standin", "kube-controller-manager"):
        try:
            with open(os.path.join(state, f"{name}.pid")) as f:
                used[name] = cpu_seconds_of(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return used


def breakdown(after, before, resources):
    """The API server's requests between two counter readings, by verb,
    resource and subresource, for the log."""
    parts = []
    for key in sorted(after):
        n = int(after[key] - before.get(key, 0))
        if n and key[1] in resources:
            parts.append(f"{key[0]} {key[1]}{'/' + key[2] if key[2] else ''} {n}")
    return ", ".join(parts)


def delta(after, before, verbs, resources):
    return int(sum(v - before.get(k, 0) for k, v in after.items() if k[0] in verbs and k[1] in resources))


WRITE = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
READ = {"GET"}
OURS = {"secrets", "runaicredentials"}


class Readiness:
    """Watches RunaiCredentials and records when each first became Ready."""

    def __init__(self, api, namespace, resource_version):
        self.api, self.namespace = api, namespace
        self.ready_at = {}
        self.lock = threading.Lock()
        self.rv = resource_version
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/runaicredentials"
        while not self.stop:
            url = urllib.parse.urlparse(f"https://{self.api.host}:{self.api.port}")
            conn = http.client.HTTPSConnection(url.hostname, url.port, context=self.api.context, timeout=3600)
            query = f"?watch=1&allowWatchBookmarks=true&resourceVersion={self.rv}"
            try:
                conn.request("GET", path + query, headers={"Authorization": f"Bearer {self.api.token}"})
                response = conn.getresponse()
                while not self.stop:
                    line = response.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    obj = event.get("object", {})
                    self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                    if event.get("type") not in ("ADDED", "MODIFIED"):
                        continue
                    conditions = (obj.get("status") or {}).get("conditions") or []
                    if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                        name = obj["metadata"]["name"]
                        with self.lock:
                            self.ready_at.setdefault(name, time.monotonic())
            except (http.client.HTTPException, OSError, ValueError):
                time.sleep(0.2)

    def count(self, names=None):
        with self.lock:
            if names is None:
                return len(self.ready_at)
            return sum(1 for n in names if n in self.ready_at)

    def at(self, name):
        with self.lock:
            return self.ready_at.get(name)


class Controller:
    def __init__(self, binary, kubeconfig, namespace, log):
        self.binary, self.kubeconfig, self.namespace, self.log = binary, kubeconfig, namespace, log
        self.proc = None
        self.port = None
        self.log_offset = 0
        self.written = set()

    def start(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.log_offset = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        self.written = set()
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, RUST_LOG="info")
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [self.binary, "run", "--namespace", self.namespace, "--controller-namespace", self.namespace,
             "--metrics-address", f"127.0.0.1:{self.port}", "--log-format", "json"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        # For hack/bench.sh's cleanup, should this script be killed.
        with open(os.path.join(os.path.dirname(self.log), "controller.pid"), "w") as f:
            f.write(str(self.proc.pid))
        return time.monotonic()

    def tokens_written(self):
        """How many RunaiCredentials the log says got a token written, read
        from where the last call stopped: cheaper for the controller than
        rendering its metrics (five series per RunaiCredential) twice a
        second, as a Prometheus scraping every 15 s never would."""
        with open(self.log, "rb") as f:
            f.seek(self.log_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.log_offset += end
        for line in chunk[:end].splitlines():
            if b"token written to the Secret" not in line:
                continue
            try:
                self.written.add(json.loads(line).get("name"))
            except ValueError:
                pass
        return len(self.written)

    def metrics(self):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        except OSError:
            return ""

    def metric_sum(self, name, text=None):
        text = self.metrics() if text is None else text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def requests(self):
        return int(self.metric_sum("runai_token_sync_token_requests_total"))

    def reconciliations(self):
        return int(self.metric_sum("runai_token_sync_reconciliations_total"))

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def wait_idle(self, quiet=3.0, limit=600, minimum=0):
        """Waits until at least `minimum` reconciliations ran and then none for
        `quiet` seconds; returns when the last one ended."""
        # Each look renders every series of the controller (five per
        # RunaiCredential): twice a second, not ten times, so that looking
        # does not load the controller it measures (±0.5 s).
        deadline = time.monotonic() + limit
        while self.reconciliations() < minimum and time.monotonic() < deadline:
            time.sleep(0.5)
        last_count, last_change = self.reconciliations(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            count = self.reconciliations()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                return last_change
        raise RuntimeError("the controller did not become idle")


def credential(name, namespace, url, ca, secret):
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "RunaiCredential",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "caBundle": ca, "clientCredentialsSecretRef": {"name": secret}},
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--standin-url", required=True)
    p.add_argument("--standin-ca", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--probes", type=int, default=20)
    args = p.parse_args()
    n, k = args.count, args.clients
    ns = "bench"
    api = Api(args.server, args.token, args.ca)
    url = open(args.standin_url).read().strip()
    ca = open(args.standin_ca).read()

    api.json("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    say(f"creating {k} credentials Secrets and {n} RunaiCredentials")
    pool = concurrent.futures.ThreadPoolExecutor(16)

    def make_secret(i):
        api.json("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"creds-{i}"},
            "stringData": {"clientId": f"app-{i}", "clientSecret": f"secret-{i}"}})

    def make_credential(i):
        api.json("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runaicredentials",
                 credential(f"c{i}", ns, url, ca, f"creds-{i % k}"))

    created = time.monotonic()
    list(pool.map(make_secret, range(k)))
    list(pool.map(make_credential, range(n)))
    say(f"created in {time.monotonic() - created:.0f} s")
    controller = Controller(args.binary, args.kubeconfig, ns, os.path.join(args.state, "controller.log"))
    before = api.metrics()
    others_before = others_cpu(args.state)
    started = controller.start()
    # The controller's log (a line per token written, just before the status
    # write) tells when all are done, without a watch of every status or a
    # scrape of every series competing for the two cores; one list
    # afterwards checks that the API server holds all N Ready.
    while True:
        if controller.proc.poll() is not None:
            raise RuntimeError("the controller exited; see " + controller.log)
        if controller.tokens_written() >= n:
            break
        time.sleep(0.2)
    all_ready = time.monotonic() - started
    # The last token's status write follows its log line: a list that comes
    # first may miss it. Listed again for up to 30 s; if it took more than
    # the first list, all Ready counts from when the list saw them all.
    deadline = time.monotonic() + 30
    while True:
        ready, cont = 0, ""
        while True:
            page = api.json("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runaicredentials?limit=500&continue={cont}")
            for item in page["items"]:
                conditions = (item.get("status") or {}).get("conditions") or []
                ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            cont = page["metadata"].get("continue")
            if not cont:
                break
        if ready >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the controller counted {n} tokens but only {ready} RunaiCredentials are Ready")
        say(f"{ready} of {n} Ready when the last token was written; listing again")
        all_ready = time.monotonic() - started
        time.sleep(0.5)
    requests_cold = controller.requests()
    rss_ready = controller.rss_mib()
    cpu_ready = controller.cpu_seconds()
    others_after = others_cpu(args.state)
    others_cold = {name: others_after[name] - others_before.get(name, 0) for name in others_after}
    cores = os.cpu_count() or 1
    # What the cold start would take if the controller cost nothing and never
    # waited: the other processes' CPU spread over every core. 1.0 is that.
    # kube-controller-manager is not in it (the formula of the goal); it is shown beside it.
    plane = sum(others_cold.get(p, 0) for p in ("kube-apiserver", "etcd", "standin"))
    ratio = all_ready / (plane / cores) if plane else float("nan")
    say(f"all Ready after {all_ready:.1f} s; controller RSS {rss_ready:.1f} MiB")
    say(f"CPU in the cold start ({all_ready:.1f} s on {os.cpu_count()} cores): controller {cpu_ready:.1f} s, "
        + ", ".join(f"{name} {others_after[name] - others_before.get(name, 0):.1f} s" for name in others_after))
    # The last statuses of the cold start land just after the last token.
    controller.wait_idle(quiet=3.0)
    after = api.metrics()
    say("requests in the cold start: " + breakdown(after, before, OURS | {"namespaces", "events", "leases"}))
    writes_cold = delta(after, before, WRITE, OURS)
    events_cold = delta(after, before, WRITE, {"events"})
    reads_cold = delta(after, before, READ, OURS | {"namespaces"})
    # The controller reads no RunaiCredential (it has them from its watch);
    # kube-controller-manager's garbage collector reads the owner of a new
    # Secret it has not seen yet. Counted apart, to tell the two apart.
    gc_reads_cold = delta(after, before, READ, {"runaicredentials"})

    # Nothing may follow the cold start: no late writes (a group's members
    # are not rewritten as it fills up), no reads.
    say("the 30 s after all are Ready")
    time.sleep(30)
    settled = api.metrics()
    quiet_writes = delta(settled, after, WRITE, OURS)
    quiet_reads = delta(settled, after, READ, {"secrets", "namespaces"})

    say("steady state: 60 s")
    before, req_before = api.metrics(), controller.requests()
    time.sleep(60)
    after = api.metrics()
    steady_writes = delta(after, before, WRITE, OURS | {"events"})
    steady_requests = controller.requests() - req_before
    rss_steady = controller.rss_mib()

    # A forced refresh: of 100 RunaiCredentials with K = N (each its own
    # exchange), of one member of a group with K < N (the group follows).
    forced = [f"c{i}" for i in range(min(100, n))] if k == n else ["c0"]
    refreshed = forced if k == n else [f"c{i}" for i in range(0, n, k)]
    say(f"forced refresh of {len(forced)}; {len(refreshed)} RunaiCredentials refresh")
    before, req_before = api.metrics(), controller.requests()
    for name in forced:
        api.json("PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runaicredentials/{name}",
                 {"metadata": {"annotations": {"tokensync.dev/refresh-requested-at": "bench"}}},
                 "application/merge-patch+json")
    controller.wait_idle(quiet=3.0)
    after = api.metrics()
    refresh_requests = controller.requests() - req_before
    say("requests in the forced refresh: " + breakdown(after, before, OURS | {"namespaces", "events", "leases"}))
    # The bench's own annotation patches are not the controller's writes.
    refresh_writes = (delta(after, before, WRITE, OURS) - len(forced)) / len(refreshed)
    refresh_reads = delta(after, before, READ, OURS | {"namespaces"}) / len(refreshed)
    gc_refresh_reads = delta(after, before, READ, {"runaicredentials"}) / len(refreshed)

    say("restart with every token fresh")
    controller.stop()
    before = api.metrics()
    restarted = controller.start()
    idle_at = controller.wait_idle(quiet=3.0, minimum=n)
    restart_idle = idle_at - restarted
    after = api.metrics()
    restart_writes = delta(after, before, WRITE, OURS | {"events"})
    restart_requests = controller.requests()
    rss_restart = controller.rss_mib()

    say(f"apply→Ready of {args.probes} single new RunaiCredentials, one at a time")
    listed = api.json("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runaicredentials?limit=1")
    watch = Readiness(api, ns, listed["metadata"]["resourceVersion"])
    latencies = []
    endpoint_before = controller.metric_sum("runai_token_sync_token_request_duration_seconds_sum")
    endpoint_count_before = controller.metric_sum("runai_token_sync_token_request_duration_seconds_count")
    reconcile_before = controller.metric_sum("runai_token_sync_reconcile_duration_seconds_sum")
    reconcile_count_before = controller.metric_sum("runai_token_sync_reconcile_duration_seconds_count")
    server_before = {q: api.metrics(f"apiserver_request_duration_seconds_{q}") for q in ("sum", "count")}
    for i in range(args.probes):
        api.json("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"probe-creds-{i}"},
            "stringData": {"clientId": f"probe-{i}", "clientSecret": f"probe-secret-{i}"}})
        name = f"probe-{i}"
        applied = time.monotonic()
        api.json("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runaicredentials",
                 credential(name, ns, url, ca, f"probe-creds-{i}"))
        while watch.at(name) is None:
            time.sleep(0.001)
        latencies.append(watch.at(name) - applied)
    endpoint_sum = controller.metric_sum("runai_token_sync_token_request_duration_seconds_sum") - endpoint_before
    endpoint_count = controller.metric_sum("runai_token_sync_token_request_duration_seconds_count") - endpoint_count_before
    endpoint_ms = 1000 * endpoint_sum / max(endpoint_count, 1)
    reconcile_sum = controller.metric_sum("runai_token_sync_reconcile_duration_seconds_sum") - reconcile_before
    reconcile_count = controller.metric_sum("runai_token_sync_reconcile_duration_seconds_count") - reconcile_count_before
    reconcile_ms = 1000 * reconcile_sum / max(reconcile_count, 1)
    p50_ms = 1000 * statistics.median(latencies)
    mean_ms = 1000 * statistics.mean(latencies)
    # The API server's own time per call of the probes, to tell its share from the controller's.
    server_after = {q: api.metrics(f"apiserver_request_duration_seconds_{q}") for q in ("sum", "count")}
    per_call = {}
    for key in sorted(server_after["count"]):
        calls = server_after["count"][key] - server_before["count"].get(key, 0)
        if key[0] in WRITE | READ and key[1] in OURS and calls > 0:
            spent = server_after["sum"][key] - server_before["sum"].get(key, 0)
            per_call[key] = 1000 * spent / calls
            say(f"  API server time per {key[0]} {key[1]}{'/' + key[2] if key[2] else ''}: "
                f"{per_call[key]:.1f} ms ({int(calls)} calls)")
    # The calls one after the other between the apply and Ready: the
    # RunaiCredential's create (the bench's own), the two reads (at once),
    # the Secret's create and the status apply. Their time is the API
    # server's; what is left besides the endpoint is the controller's (and
    # the two watch deliveries).
    chain = (per_call.get(("POST", "runaicredentials", ""), 0.0)
             + per_call.get(("GET", "secrets", ""), 0.0)
             + per_call.get(("POST", "secrets", ""), 0.0)
             + per_call.get(("APPLY", "runaicredentials", "status"), 0.0))
    controller.stop()
    watch.stop = True

    shared = "each its own application" if k == n else f"{k} applications, {n // k} RunaiCredentials each"
    rows = [
        ("cold start (controller started with all present) to all Ready (±0.2 s)", f"{all_ready:.1f} s"),
        ("CPU in the cold start: controller / kube-apiserver / etcd / stand-in / kube-controller-manager",
         f"{cpu_ready:.1f} / " + " / ".join(f"{others_cold.get(p, 0):.1f}"
                                             for p in ("kube-apiserver", "etcd", "standin", "kube-controller-manager"))
         + " s"),
        (f"all-Ready time ÷ ((kube-apiserver + etcd + stand-in CPU) ÷ {cores} cores)", f"{ratio:.2f}"),
        ("token requests in the cold start", f"{requests_cold}"),
        ("controller RSS when all are Ready", f"{rss_ready:.1f} MiB"),
        ("controller CPU per RunaiCredential in the cold start", f"{1000 * cpu_ready / n:.2f} ms"),
        ("writes per RunaiCredential in the cold start (Secret, status)", f"{writes_cold / n:.2f}"),
        ("Events per RunaiCredential in the cold start", f"{events_cold / n:.2f}"),
        ("reads per RunaiCredential in the cold start (Secrets, namespaces)", f"{(reads_cold - gc_reads_cold) / n:.2f}"),
        ("  and GETs of RunaiCredentials in the cold start, per RunaiCredential (kube-controller-manager's garbage collector)", f"{gc_reads_cold / n:.2f}"),
        ("writes per refreshed RunaiCredential (forced refresh)", f"{refresh_writes:.2f}"),
        ("reads per refreshed RunaiCredential (Secrets, namespaces)", f"{refresh_reads - gc_refresh_reads:.2f}"),
        ("  and GETs of RunaiCredentials in the refresh, per refreshed one (kube-controller-manager's garbage collector)", f"{gc_refresh_reads:.2f}"),
        ("token requests for that refresh", f"{refresh_requests}"),
        ("writes / reads (Secrets, namespaces) in the 30 s after all are Ready", f"{quiet_writes} / {quiet_reads}"),
        ("writes in 60 s of steady state", f"{steady_writes}"),
        ("token requests in 60 s of steady state", f"{steady_requests}"),
        ("controller RSS in steady state", f"{rss_steady:.1f} MiB"),
        ("restart with all fresh: token requests", f"{restart_requests}"),
        ("restart with all fresh: writes", f"{restart_writes}"),
        ("restart with all fresh: time until idle (±0.5 s)", f"{restart_idle:.1f} s"),
        ("controller RSS after the restart", f"{rss_restart:.1f} MiB"),
        (f"apply→Ready of a new RunaiCredential, p50 of {args.probes}", f"{p50_ms:.1f} ms"),
        ("  of which the token endpoint (mean)", f"{endpoint_ms:.1f} ms"),
        ("  controller and API server overhead (p50 − endpoint)", f"{p50_ms - endpoint_ms:.1f} ms"),
        # The API server's times are means: the split uses the mean too.
        (f"apply→Ready, mean of {args.probes}, less the token endpoint", f"{mean_ms - endpoint_ms:.1f} ms"),
        ("  of which the API server's own time for the calls one after the other "
         "(create, read, Secret create, status apply; means)", f"{chain:.1f} ms"),
        ("  the controller's own time (the rest)", f"{mean_ms - endpoint_ms - chain:.1f} ms"),
        (f"  reconciliation time (mean of {int(reconcile_count)}), its API calls included", f"{reconcile_ms:.1f} ms"),
        ("  reconciliation time less the token endpoint", f"{reconcile_ms - endpoint_ms:.1f} ms"),
    ]
    version = api.json("GET", "/version").get("gitVersion", "unknown")
    print(f"runai-token-sync, N = {n} RunaiCredentials, K = {k} ({shared}), release build, local kube-apiserver {version}")
    print("| measure | value |")
    print("| --- | --- |")
    for measure, value in rows:
        print(f"| {measure} | {value} |")
    print("(writes and reads: the API server's apiserver_request_total, on secrets, runaicredentials and namespaces)")


if __name__ == "__main__":
    main()
