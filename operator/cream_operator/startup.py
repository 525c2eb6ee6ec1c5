"""Start the operator: Kubernetes client, metrics endpoint, then kopf with the controller in its
memo (kopf hands every handler a copy of it: no module globals)."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from . import handlers  # noqa: F401 - importing it registers the kopf handlers
from .config import OperatorConfig
from .controller import Controller
from .leader import ElectionConfig, Elector, LeaseLock
from .metrics import Metrics
from .resync import Resync

LOG_FORMATS = {"text": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def kube_client(connections: int) -> client.ApiClient:
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    # One connection per handler thread: a smaller pool opens and drops a TLS connection for
    # every call beyond it.
    cfg.connection_pool_maxsize = connections
    return client.ApiClient(cfg)


# Lines that say nothing the action lines (actionlog) do not, at a rate that buries them: kopf's
# "Handler 'job_event' succeeded." for every watch event, and a line for every health probe.
# Their warnings and errors still show; --verbose shows everything.
QUIET = ("kopf.objects", "aiohttp.access")


def configure_logging(verbose: bool, log_format: str) -> None:
    # kopf's handler on the root logger is the only one: a second (logging.basicConfig beside it)
    # printed every line twice.
    kopf.configure(verbose=verbose, log_format=LOG_FORMATS[log_format])
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


class _StandbyHealth(BaseHTTPRequestHandler):
    """/healthz of a standby, until kopf's own takes the port: 200 while the election loop still
    looks at the Lease (the Pod is alive, not stuck)."""

    elector: Elector

    def do_GET(self):  # noqa: N802 - http.server's name
        stale = time.monotonic() - self.elector.last_look > 3 * self.elector.config.lease_duration
        self.send_response(500 if stale else 200)
        self.end_headers()
        self.wfile.write(b"stuck\n" if stale else b"standby\n")

    def log_message(self, *_):  # probes every few seconds: not worth a line each
        pass


def stand_by(elector: Elector, liveness: str) -> None:
    """Block until this replica leads, answering the liveness probe meanwhile."""
    url = urlsplit(liveness)
    handler = type("Health", (_StandbyHealth,), {"elector": elector})
    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), handler)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    try:
        elector.acquire()
    finally:
        server.shutdown()
        server.server_close()  # kopf's health endpoint binds the same port next


def run_operator(args) -> int:
    configure_logging(args.verbose, args.log_format)
    election = ElectionConfig.from_env()
    if election is not None and args.peering is not None:
        raise SystemExit("--peering and CREAM_LEASE_NAME are two ways to run several replicas: "
                         "choose one (the Lease: unset --peering)")
    metrics = Metrics()
    start_http_server(args.metrics_port, registry=metrics.registry)
    api = kube_client(args.workers)
    elector = None
    if election is not None:
        # A standby runs nothing of the operator (no watch, no handler) until it leads.
        elector = Elector(LeaseLock(api, election))
        stand_by(elector, args.liveness)
        elector.keep_leading()
    controller = Controller(api, OperatorConfig.from_env(), metrics)
    resync = Resync(controller.cache.run_keys, controller.last_passes, controller.reconcile,
                    handlers.RESYNC_SECONDS)
    if args.peering is None:
        resync.start()
    else:
        handlers.register_peering_resync()
    try:
        kopf.run(
            memo=kopf.Memo(controller=controller, workers=args.workers),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
        )
    finally:
        resync.stop()
        if elector is not None:
            elector.release()
    return 0
