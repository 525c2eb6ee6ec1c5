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


def run_operator(args) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    metrics = Metrics()
    start_http_server(args.metrics_port, registry=metrics.registry)
    controller = Controller(kube_client(), OperatorConfig.from_env(), metrics)
    kopf.configure(verbose=args.verbose)
    kopf.run(
        memo=kopf.Memo(controller=controller),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority,
    )
    return 0
