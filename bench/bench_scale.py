"""Many CreamRuns at once against the real control plane, on nodes kwok plays.

A fresh cluster per trial (etcd, kube-apiserver, kube-controller-manager, kube-scheduler from
tests/kubeharness; no node agent), kwok playing `--nodes` GPU nodes whose Pods complete after a
short delay with a stage's termination message (tests/cluster/fixtures/kwok-cream-stages.yaml), and
the real operator (`python -m cream_operator`, as tests/cluster/operator_process.py starts it)
under its own ServiceAccount with the chart's RBAC, so the API server's priority and fairness
treat it as in production (an admin would be exempt) and its audit log can single it out.

Then `--runs` one-iteration CreamRuns are created at once (7 stage Jobs each, GPU stages asking for
nvidia.com/gpu) and the trial ends when every run has a final phase. Recorded per trial:
- apply-to-first-Job and stage-done-to-next-Job latency, from a watch of runs and Jobs
  (arrival times in this process: the same clock and path for both ends of each latency);
- reconcile duration, from the operator's cream_reconcile_duration_seconds histogram;
- the operator's peak RSS and CPU seconds (/proc, just before it is stopped);
- the operator's API requests per run-stage (audit log, its user only) and all clients' requests
  (apiserver_request_total increase), and any 429 or 5xx.

    .venv/bin/python bench/bench_scale.py --runs 100 --repeat 2
    .venv/bin/python bench/bench_scale.py --runs 1000 [--workers 64] --json build/bench-scale.json

Not part of `make test`: a 1,000-run trial takes 9-13 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from kubernetes import client

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster"), str(ROOT / "bench")]

from operator_process import OperatorProcess  # noqa: E402
from scale_measure import (  # noqa: E402
    JobTimes,
    audit_summary,
    counter_sum,
    histogram_increase,
    histogram_quantile,
    latencies,
    parse_metrics,
    percentile,
    request_codes,
)

from cream_operator import pipeline  # noqa: E402
from cream_operator.config import WORKERS  # noqa: E402
from cream_operator.jobs import ANNOTATION_STEP, LABEL_RUN  # noqa: E402
from cream_operator.spec import GROUP, PLURAL, VERSION, CreamRunSpec  # noqa: E402
from kubeharness import binaries  # noqa: E402
from kubeharness.cluster import Cluster  # noqa: E402
from kubeharness.kwok import Kwok, load_stages  # noqa: E402

NAMESPACE = "bench"
OPERATOR_NS = "cream-system"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:cream-operator"
KWOK_STAGES = ROOT / "tests" / "cluster" / "fixtures" / "kwok-cream-stages.yaml"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}


def run_spec(node_selector: dict, toleration: dict, cleanup_policy: str = "Retain") -> dict:
    """One iteration, no baseline evaluation: sft, sample, score x2, consistency, dpo, evaluate.
    cleanupPolicy Delete puts kopf's finalizer (and its patches) on every run."""
    gpu = {"gpus": 1, "cpu": "4", "memory": "32Gi"}
    return {
        "iterations": 1,
        "model": {"base": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"sft": "s3://bench-data/sft.jsonl", "prompts": ["s3://bench-data/prompts.jsonl"]},
        "evaluation": {"baseline": False, "tasks": [
            {"name": "arc_easy", "uri": "s3://bench-data/arc_easy.jsonl",
             "format": "multiple_choice"},
            {"name": "gsm8k", "uri": "s3://bench-data/gsm8k.jsonl", "format": "gsm8k"}]},
        "storage": {"uri": "s3://bench/runs"},
        "resources": {"sft": gpu, "sample": gpu, "score": gpu, "dpo": gpu, "evaluate": gpu,
                      "consistency": {"gpus": 0, "cpu": "2", "memory": "8Gi"}},
        "scheduling": {"nodeSelector": node_selector, "tolerations": [toleration]},
        "cleanupPolicy": cleanup_policy,
    }


def step_dependencies(spec: dict) -> dict[str, tuple[str, ...]]:
    return {s.key: s.after for s in pipeline.plan(CreamRunSpec.model_validate(spec), "s3://b/r")}


class Recorder:
    """Arrival times of watch events: runs (first seen, final phase) and Jobs (first seen,
    Complete first seen). Raw JSON lines, not the client's models: decoding models would make
    this process the bottleneck at a thousand runs."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.api = api
        self.namespace = namespace
        self.run_added: dict[str, float] = {}
        self.run_final: dict[str, tuple[str, float]] = {}
        self.jobs: dict[str, JobTimes] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(kind,), daemon=True)
                        for kind in ("runs", "jobs")]

    def start(self) -> Recorder:
        for t in self.threads:
            t.start()
        return self

    def _open(self, kind: str, rv: str | None):
        kw = {"watch": True, "_preload_content": False, "timeout_seconds": 120,
              "allow_watch_bookmarks": True, "_request_timeout": (10, 200)}
        if rv:
            kw["resource_version"] = rv
        if kind == "runs":
            return client.CustomObjectsApi(self.api).list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, **kw)
        return client.BatchV1Api(self.api).list_namespaced_job(self.namespace, **kw)

    def _loop(self, kind: str) -> None:
        rv = None
        while not self.stop.is_set():
            try:
                resp = self._open(kind, rv)
                buf = b""
                for chunk in resp.stream(1 << 16):
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        now = time.monotonic()
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":  # 410 Gone: start over from a fresh list
                            rv = None
                            raise ConnectionResetError(ev["object"].get("message"))
                        obj = ev["object"]
                        rv = obj["metadata"].get("resourceVersion") or rv
                        if ev["type"] != "BOOKMARK":
                            self._record(kind, obj, now)
                    if self.stop.is_set():
                        break
                resp.release_conn()
            except Exception:  # noqa: BLE001 - reconnect, as any watcher does
                time.sleep(0.2)

    def _record(self, kind: str, obj: dict, now: float) -> None:
        meta = obj["metadata"]
        with self.lock:
            if kind == "runs":
                self.run_added.setdefault(meta["name"], now)
                phase = (obj.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed") and meta["name"] not in self.run_final:
                    self.run_final[meta["name"]] = (phase, now)
                return
            job = self.jobs.get(meta["name"])
            if job is None:
                job = self.jobs[meta["name"]] = JobTimes(
                    run=(meta.get("labels") or {}).get(LABEL_RUN, ""),
                    step=(meta.get("annotations") or {}).get(ANNOTATION_STEP, ""), added=now)
            done = any(c.get("type") == "Complete" and c.get("status") == "True"
                       for c in (obj.get("status") or {}).get("conditions") or [])
            if done and job.complete is None:
                job.complete = now


def apiserver_metrics(cluster: Cluster) -> list:
    pki = cluster.control_plane.pki
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(str(pki.ca.cert))
    ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    url = f"{cluster.control_plane.server}/metrics"
    with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:
        return parse_metrics(resp.read().decode())


def wait_for_storage(cluster: Cluster, timeout: float = 60) -> None:
    """A new CRD's watch cache answers 429 "storage is (re)initializing" for a moment: that is no
    load, so wait it out before anything is measured."""
    custom = client.CustomObjectsApi(cluster.api_client())
    deadline = time.monotonic() + timeout
    while True:
        try:
            custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            return
        except client.ApiException as exc:
            if exc.status != 429 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def operator_kubeconfig(cluster: Cluster, kubectl, state: Path) -> Path:
    """The chart's ServiceAccount and RBAC (namespaced to the bench namespace), and a kubeconfig
    with a token of that account."""
    helm = str(binaries.find("helm"))
    rendered = subprocess.run(
        [helm, "template", "cream-operator", str(ROOT / "charts" / "cream-operator"),
         "--namespace", OPERATOR_NS, "--set", f"watchNamespaces={{{NAMESPACE}}}",
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        check=True, capture_output=True, text=True).stdout
    kubectl("apply", "-f", "-", input=rendered)
    core = client.CoreV1Api(cluster.api_client())
    token = core.create_namespaced_service_account_token(
        "cream-operator", OPERATOR_NS, {"spec": {"expirationSeconds": 86400}}).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": "cream-operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "cream-operator"
    path = state / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    path.chmod(0o600)
    return path


def proc_usage(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds user+system) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm_kib = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def trial(args, index: int) -> dict:
    state = Path(tempfile.mkdtemp(prefix=f"bench-scale-{args.runs}-{index}-",
                                  dir=args.state_dir))
    policy = state / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit_log = state / "audit.log"
    qps = ["--kube-api-qps=200", "--kube-api-burst=400"]
    cluster = Cluster(state, node_agent=False, extra_args={
        "kube-apiserver": [f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}",
                           "--audit-log-mode=batch", "--audit-log-maxsize=100000"],
        # The simulated cluster must not be what limits the operator: the default client QPS
        # (20) of the Job controller would take tens of minutes for 7,000 Jobs. Node heartbeats
        # are background load, not under test: kwok renews the 128 Leases every 30 s, not 10 s.
        "kube-controller-manager": [*qps, "--node-monitor-grace-period=180s"],
        "kube-scheduler": qps,
    })
    loads = {"start": loadavg()}
    kwok = op = rec = spy = None
    try:
        cluster.start()
        env = cluster.control_plane.env()
        kubectl_bin = str(binaries.find("kubectl"))

        def kubectl(*a, input=None):
            return subprocess.run([kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", *a],
                                  input=input, check=True, capture_output=True, text=True)

        kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
        wait_for_storage(cluster)
        for ns in (NAMESPACE, OPERATOR_NS):
            kubectl("create", "namespace", ns)
        stages = load_stages(KWOK_STAGES)
        for s in stages:
            if s["metadata"]["name"] == "pod-complete":
                s["spec"]["delay"] = {"durationMilliseconds": args.stage_ms,
                                      "jitterDurationMilliseconds": args.stage_ms * 2}
        kwok = Kwok(state / "kwok", cluster.kubeconfig, nodes=args.nodes, gpus_per_node=8,
                    stages=stages, lease_seconds=120).start()
        api = cluster.api_client()
        op_env = {**env, "KUBECONFIG": str(operator_kubeconfig(cluster, kubectl, state))}
        if args.operator_src:  # another checkout's operator (a baseline), first on the path
            src = Path(args.operator_src).resolve()
            op_env["PYTHONPATH"] = os.pathsep.join(
                [str(src / "operator"), str(src / "stages"), op_env.get("PYTHONPATH", "")])
        before = apiserver_metrics(cluster)
        op = OperatorProcess(op_env, NAMESPACE, state, "s3://bench/runs",
                             args=("--workers", str(args.workers)) if args.workers else ()).start()
        if args.profile:  # sampled stacks of every thread, waiting ones too (--idle)
            args.profile.mkdir(parents=True, exist_ok=True)
            out = args.profile / f"operator-{args.runs}-{index}.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--idle", "--threads",
                 "--format", "raw", "--rate", "50", "-o", str(out), "--pid", str(op.proc.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = Recorder(cluster.api_client(), NAMESPACE).start()
        spec = run_spec(kwok.node_selector, kwok.toleration, args.cleanup_policy)
        custom = client.CustomObjectsApi(api)
        names = [f"scale-{i:04d}" for i in range(args.runs)]
        loads["apply"] = loadavg()
        t_apply = time.monotonic()

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "CreamRun",
                "metadata": {"name": name}, "spec": spec})

        with cf.ThreadPoolExecutor(16) as pool:
            list(pool.map(create, names))
        applied_in = time.monotonic() - t_apply
        deadline = time.monotonic() + args.timeout
        while len(rec.run_final) < args.runs and time.monotonic() < deadline:
            if op.proc.poll() is not None:
                raise RuntimeError(f"the operator died:\n{op.log_text()[-3000:]}")
            for svc in [*cluster.control_plane.services, kwok.service]:
                if not svc.running():  # e.g. etcd on a full disk: the trial means nothing
                    raise RuntimeError(f"{svc.name} died:\n{svc.log_tail()}")
            time.sleep(1)
        wall = time.monotonic() - t_apply
        loads["end"] = loadavg()
        rss_mib, cpu_s = proc_usage(op.proc.pid)
        op_metrics = parse_metrics(op.metrics_text())
        after = apiserver_metrics(cluster)
        runs = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
        nodes_ready = sum(
            any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            for n in client.CoreV1Api(api).list_node(label_selector="type=kwok").items)
    finally:
        if rec is not None:
            rec.stop.set()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=120)
        if op is not None:
            op.stop()
        if kwok is not None:
            kwok.stop(delete_nodes=False)
        cluster.stop()

    with rec.lock:
        jobs = list(rec.jobs.values())
        lat = latencies(dict(rec.run_added), jobs, step_dependencies(spec))
        final = dict(rec.run_final)
    phases = {}
    with_results = 0
    for r in runs:
        st = r.get("status") or {}
        phases[st.get("phase")] = phases.get(st.get("phase"), 0) + 1
        res = {x["iteration"]: x for x in st.get("results", [])}
        if res.get(1, {}).get("consistencyRate") is not None and res[1].get("accuracy"):
            with_results += 1
    with open(audit_log) as fh:
        audit = audit_summary(fh, OPERATOR_USER)
    codes = request_codes(before, after)
    api_latency = histogram_increase(before, after, "apiserver_request_duration_seconds",
                                     exclude_verbs=("WATCH", "CONNECT"))
    run_stages = len(jobs)
    ms = 1000.0

    def pct(values, q):
        v = percentile(values, q)
        return None if v is None else round(v * ms, 1)

    record = {
        "runs": args.runs, "trial": index, "operator": args.operator_src or "installed",
        "cleanup_policy": args.cleanup_policy, "workers": args.workers or WORKERS,
        "nodes": args.nodes, "nodes_ready_at_end": nodes_ready, "stage_ms": args.stage_ms,
        "phases": phases, "runs_with_results": with_results,
        "final_seen": len(final), "jobs": run_stages, "early_jobs": len(lat.early),
        "wall_s": round(wall, 1), "applied_in_s": round(applied_in, 1),
        "apply_to_first_job_ms": {"p50": pct(lat.apply_to_first_job, 50),
                                  "p99": pct(lat.apply_to_first_job, 99),
                                  "max": pct(lat.apply_to_first_job, 100)},
        "done_to_next_job_ms": {"p50": pct(lat.done_to_next_job, 50),
                                "p99": pct(lat.done_to_next_job, 99),
                                "max": pct(lat.done_to_next_job, 100)},
        "reconcile_ms": {
            q: (None if (v := histogram_quantile(op_metrics, "cream_reconcile_duration_seconds",
                                                 f)) is None else round(v * ms, 1))
            for q, f in (("p50", 0.5), ("p99", 0.99))},
        "reconciles": counter_sum(op_metrics, "cream_reconcile_duration_seconds_count"),
        "operator_peak_rss_mib": round(rss_mib, 1), "operator_cpu_s": round(cpu_s, 1),
        "operator_requests": audit.requests,
        "operator_requests_per_run_stage": round(audit.requests / max(run_stages, 1), 2),
        "operator_requests_by_kind": dict(audit.by_verb_resource.most_common()),
        "operator_codes": {str(k): v for k, v in sorted(audit.by_code.items())},
        "operator_failures": [{"code": code, "request": request, "message": message[:300],
                               "count": n}
                              for (code, request, message), n in audit.failures.most_common(10)],
        "all_requests_per_run_stage": round(sum(codes.values()) / max(run_stages, 1), 2),
        "apiserver_codes": {k: int(v) for k, v in sorted(codes.items())},
        # every client's requests but watches: how loaded the API server was
        "apiserver_latency_ms": {
            q: (None if (v := histogram_quantile(api_latency, "apiserver_request_duration_seconds",
                                                 f)) is None else round(v * ms, 1))
            for q, f in (("p50", 0.5), ("p99", 0.99))},
        "http_429_or_5xx": int(sum(v for k, v in codes.items()
                                   if k == "429" or k.startswith("5"))),
        "loadavg": loads,
    }
    if not args.keep:
        shutil.rmtree(state, ignore_errors=True)
    return record


def table(records: list[dict]) -> str:
    head = ("| runs | trial | wall s | apply->1st Job p50/p99 ms | done->next Job p50/p99 ms | "
            "reconcile p50/p99 ms | reconciles | peak RSS MiB | CPU s | op. req/run-stage | "
            "all req/run-stage | API server p50/p99 ms | 429/5xx | load 1m start/end |")
    rows = [head, "|" + "---:|" * 14]
    for r in records:
        a, d, c = r["apply_to_first_job_ms"], r["done_to_next_job_ms"], r["reconcile_ms"]
        api = r.get("apiserver_latency_ms", {})
        rows.append(
            f"| {r['runs']} | {r['trial']} | {r['wall_s']} | {a['p50']} / {a['p99']} | "
            f"{d['p50']} / {d['p99']} | {c['p50']} / {c['p99']} | {int(r['reconciles'])} | "
            f"{r['operator_peak_rss_mib']} | {r['operator_cpu_s']} | "
            f"{r['operator_requests_per_run_stage']} | {r['all_requests_per_run_stage']} | "
            f"{api.get('p50')} / {api.get('p99')} | "
            f"{r['http_429_or_5xx']} | {r['loadavg']['start'].split()[0]} / "
            f"{r['loadavg']['end'].split()[0]} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--nodes", type=int, default=128, help="kwok nodes, 8 GPUs each")
    p.add_argument("--stage-ms", type=int, default=2000,
                   help="a simulated stage runs this long plus up to twice as much jitter")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--workers", type=int, help="the operator's --workers (default: its own)")
    p.add_argument("--cleanup-policy", choices=("Retain", "Delete"), default="Retain",
                   help="the runs' cleanupPolicy (Delete: kopf's finalizer on each)")
    p.add_argument("--state-dir", default=None, help="where trial state goes (default: /tmp)")
    p.add_argument("--keep", action="store_true", help="keep each trial's state directory")
    p.add_argument("--operator-src", help="run the operator of this checkout (e.g. a baseline "
                   "made with `git worktree add`) instead of the installed one")
    p.add_argument("--profile", type=Path, help="sample the operator with py-spy (its [dev] "
                   "extra) into DIR/operator-<runs>-<trial>.txt (collapsed stacks)")
    p.add_argument("--json", type=Path, help="append the records (JSON lines) to this file")
    args = p.parse_args()
    records = []
    for i in range(args.repeat):
        record = trial(args, i + 1)
        record.update(date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{os.cpu_count()} CPUs, "
                      f"{platform.machine()}, Python {platform.python_version()}")
        records.append(record)
        print(json.dumps(record), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a") as fh:
                fh.write(json.dumps(record) + "\n")
    print(table(records))


if __name__ == "__main__":
    main()
