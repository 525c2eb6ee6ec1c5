"""Start the operator: Kubernetes client, metrics endpoint, then kopf with the controller in its
memo (kopf hands every handler a copy of it: no module globals)."""

from __future__ import annotations

import logging

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from . import handlers  # noqa: F401 - importing it registers the kopf handlers
from .config import OperatorConfig
from .controller import Controller
from .metrics import Metrics
from .resync import Resync

LOG_FORMATS = {"text": kopf.LogFormat.FULL, "json": kopf.LogFormat.JSON}


def kube_client() -> client.ApiClient:
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    # One connection per handler thread: a smaller pool opens and drops a TLS connection for
    # every call beyond it.
    cfg.connection_pool_maxsize = handlers.WORKERS
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


def run_operator(args) -> int:
    configure_logging(args.verbose, args.log_format)
    metrics = Metrics()
    start_http_server(args.metrics_port, registry=metrics.registry)
    controller = Controller(kube_client(), OperatorConfig.from_env(), metrics)
    resync = Resync(controller.cache.run_keys, controller.last_passes, controller.reconcile,
                    handlers.RESYNC_SECONDS)
    if args.peering is None:
        resync.start()
    else:
        handlers.register_peering_resync()
    try:
        kopf.run(
            memo=kopf.Memo(controller=controller),
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
        )
    finally:
        resync.stop()
    return 0
