#!/usr/bin/env python3
"""The API server's CPU per write of a RunaiCredential's status, for each way
of writing it, and per create of a target Secret (standard library only).

Run by hack/write-cost.sh on a control plane of its own: creates COUNT fresh
RunaiCredentials (with a caBundle, as the benchmark's) per way, writes each
one's status once from four threads, and prints kube-apiserver's and etcd's
CPU (from /proc) divided by COUNT. The API server's background work in the
3 s after the writes is counted too, so the figures are upper bounds.
"""

import argparse
import concurrent.futures
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Api, cpu_seconds_of  # noqa: E402

GROUP_VERSION = "tokensync.dev/v1alpha1"
BASE = f"/apis/{GROUP_VERSION}"
WAYS = ("apply", "merge", "replace", "json-patch", "apply-one-field", "secret")


def status(name):
    """A status as the controller writes it when a token is in place."""
    at = "2026-12-01T00:00:00Z"
    return {
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "TokenReady",
             "message": f"Secret {name} holds a token valid until 2026-12-01T01:00:00Z",
             "lastTransitionTime": at, "observedGeneration": 1},
            {"type": "Degraded", "status": "False", "reason": "RefreshSucceeded",
             "message": "the last refresh succeeded", "lastTransitionTime": at, "observedGeneration": 1},
        ],
        "secretName": name, "lastRefreshTime": at, "expirationTime": "2026-12-01T01:00:00Z",
        "nextRefreshTime": "2026-12-01T00:45:00Z", "failedAttempts": 0, "sharedWith": 0,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True)
    p.add_argument("--count", type=int, default=1500)
    args = p.parse_args()
    state = args.state
    port = open(f"{state}/apiserver.port").read().strip()
    api = Api(f"https://127.0.0.1:{port}", open(f"{state}/tokens.csv").read().split(",")[0], f"{state}/pki/ca.crt")
    ca = open(f"{state}/pki/ca.crt").read()
    pids = {name: int(open(f"{state}/{name}.pid").read()) for name in ("kube-apiserver", "etcd")}

    def cpu():
        return {name: cpu_seconds_of(pid) for name, pid in pids.items()}

    def pool(fn, items):
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            return list(ex.map(fn, items))

    print(f"CPU per write over {args.count} fresh RunaiCredentials each:")
    for way in WAYS:
        ns = f"write-cost-{way}"
        api.json("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

        def create(i):
            return api.json("POST", f"{BASE}/namespaces/{ns}/runaicredentials", {
                "apiVersion": GROUP_VERSION, "kind": "RunaiCredential", "metadata": {"name": f"c-{i}"},
                "spec": {"url": "https://runai.example.com", "caBundle": ca,
                         "clientCredentialsSecretRef": {"name": f"creds-{i}"}}})

        objects = pool(create, range(args.count))
        time.sleep(3)
        before = cpu()

        def write(obj):
            name = obj["metadata"]["name"]
            path = f"{BASE}/namespaces/{ns}/runaicredentials/{name}/status"
            new = status(name)
            apply = path + "?fieldManager=runai-token-sync&force=true"
            if way == "apply":
                done = api.json("PATCH", apply, {"apiVersion": GROUP_VERSION, "kind": "RunaiCredential", "status": new},
                                "application/apply-patch+yaml")
            elif way == "apply-one-field":
                done = api.json("PATCH", apply, {"apiVersion": GROUP_VERSION, "kind": "RunaiCredential",
                                                 "status": {"failedAttempts": 0}}, "application/apply-patch+yaml")
            elif way == "merge":
                done = api.json("PATCH", path, {"status": new}, "application/merge-patch+json")
            elif way == "json-patch":
                done = api.json("PATCH", path, [{"op": "add", "path": "/status", "value": new}],
                                "application/json-patch+json")
            elif way == "replace":
                done = api.json("PUT", path, dict(obj, status=new))
            else:
                done = api.json("POST", f"/api/v1/namespaces/{ns}/secrets", {
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "runai-token-sync"},
                                 "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "RunaiCredential",
                                                      "name": name, "uid": obj["metadata"]["uid"], "controller": True}]},
                    "stringData": {"token": "x" * 1200}})
            if not done.get("metadata"):
                raise RuntimeError(f"{way} of {name} failed: {done}")

        pool(write, objects)
        time.sleep(3)
        after = cpu()
        per = {name: 1000 * (after[name] - before[name]) / args.count for name in pids}
        label = "create of a target Secret" if way == "secret" else f"status by {way}"
        print(f"  {label:36s} kube-apiserver {per['kube-apiserver']:.2f} ms, etcd {per['etcd']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
