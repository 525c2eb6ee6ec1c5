# The test cluster (tests/kubeharness): included by the top-level Makefile.
#   make cluster-tools   build/fetch kube-apiserver, kube-controller-manager, kube-scheduler,
#                        kubectl, etcd, helm, the S3 server, Kueue, Grafana and kwok (cached under
#                        $${XDG_CACHE_HOME:-~/.cache}/cream-operator/bin), install prometheus
#   make cluster-up      start a cluster in the background (state in $(CLUSTER_STATE)); prints
#                        the kubeconfig path (CLUSTER_NODES=2 for two nodes)
#   make cluster-down    stop it
#   make cluster-demo    the operator at work: cluster, chart, S3, examples/tiny.yaml followed to
#                        its end, `cream get`, Prometheus and Grafana left running (kubeharness/demo.py)
# `tools` needs only the standard library, so it runs before the venv exists.
CLUSTER_STATE ?= build/cluster
CLUSTER_GPUS ?= 8
CLUSTER_NODES ?= 1
KUBEHARNESS = PYTHONPATH=tests$${PYTHONPATH:+:$$PYTHONPATH}

.PHONY: cluster-tools cluster-up cluster-down cluster-status cluster-demo

cluster-tools:
	@$(KUBEHARNESS) python3 -m kubeharness tools

cluster-up: venv cluster-tools
	@$(KUBEHARNESS) $(PY) -m kubeharness up --state $(CLUSTER_STATE) --gpus $(CLUSTER_GPUS) \
		--nodes $(CLUSTER_NODES)

cluster-down:
	@$(KUBEHARNESS) $(if $(wildcard $(PY)),$(PY),python3) -m kubeharness down --state $(CLUSTER_STATE)

cluster-status:
	@$(KUBEHARNESS) python3 -m kubeharness status --state $(CLUSTER_STATE)

cluster-demo: venv cluster-tools
	@$(KUBEHARNESS) $(PY) -m kubeharness.demo --state $(CLUSTER_STATE)
