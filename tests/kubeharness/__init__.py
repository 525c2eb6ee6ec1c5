"""A real Kubernetes control plane for tests and demos.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the pinned Kubernetes
release, a local node agent that runs each Pod's command as a process (the one stand-in), a real
S3-compatible server and a real Prometheus, all on loopback. See tests/cluster/README.md.

Run by hand: ``PYTHONPATH=tests .venv/bin/python -m kubeharness up|down|tools``.
The submodules import the kubernetes client; ``binaries`` needs only the standard library, so
``python3 -m kubeharness tools`` works before the venv exists.
"""
