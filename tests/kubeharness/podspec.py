"""What a kubelet derives from a Pod spec before it starts a container: environment variables,
``$(VAR)`` expansion, volume contents and mount plans. Pure functions over Pod dicts, plus the API
reads that ``valueFrom``/volumes need (through a small ``Reader``).
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client.exceptions import ApiException


class NotReady(Exception):
    """A referenced object is missing; the kubelet keeps the Pod pending and retries."""


class Unsupported(Exception):
    """A Pod feature the node agent cannot provide; the Pod fails with this message."""


class Reader:
    """The few API reads a kubelet does for a Pod, on a CoreV1Api, returning raw dicts."""

    def __init__(self, core):
        self.core = core

    def _get(self, fn, name: str, ns: str, optional: bool, kind: str) -> dict | None:
        try:
            return json.loads(fn(name, ns, _preload_content=False).data)
        except ApiException as e:
            if e.status == 404:
                if optional:
                    return None
                raise NotReady(f'{kind} "{name}" not found') from None
            raise

    def configmap(self, ns: str, name: str, optional: bool = False) -> dict[str, bytes] | None:
        obj = self._get(self.core.read_namespaced_config_map, name, ns, optional, "configmap")
        if obj is None:
            return None
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def secret(self, ns: str, name: str, optional: bool = False) -> dict[str, bytes] | None:
        obj = self._get(self.core.read_namespaced_secret, name, ns, optional, "secret")
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def token(self, ns: str, sa: str, pod: dict, audience: str | None, seconds: int) -> str:
        spec: dict = {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
        }
        if audience:
            spec["audiences"] = [audience]
        resp = self.core.create_namespaced_service_account_token(
            sa, ns, {"spec": spec}, _preload_content=False)
        return json.loads(resp.data)["status"]["token"]


# --- environment -----------------------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, the rest stays."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _REF.sub(sub, value)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: dict, path: str) -> str:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    pod_ip, host_ip = status.get("podIP", "127.0.0.1"), status.get("hostIP", "127.0.0.1")
    if m := _SUBSCRIPT.match(path):
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return simple[path]
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise Unsupported(f"fieldRef {path!r} is not supported")


_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(q: str | int | float) -> float:
    m = re.fullmatch(r"([0-9.eE+\-]+?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?", str(q))
    if not m:
        raise Unsupported(f"cannot parse quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""]


def resource_field_ref(container: dict, ref: dict, node_allocatable: dict[str, str]) -> str:
    res = ref["resource"]  # limits.cpu, requests.memory, ...
    kind, _, name = res.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "limits":  # no limit: the node's allocatable, like the kubelet
        value = node_allocatable.get(name, "0")
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(quantity(value or "0") / divisor))


def container_env(pod: dict, container: dict, reader: Reader, base: dict[str, str],
                  node_allocatable: dict[str, str]) -> dict[str, str]:
    """The container's environment: base (service links etc.), envFrom, then env, in order."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        if ref := src.get("configMapRef"):
            data = reader.configmap(ns, ref["name"], ref.get("optional", False)) or {}
        elif ref := src.get("secretRef"):
            data = reader.secret(ns, ref["name"], ref.get("optional", False)) or {}
        else:
            continue
        env.update({prefix + k: v.decode() for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if ref := vf.get("fieldRef"):
            env[name] = field_ref(pod, ref["fieldPath"])
        elif ref := vf.get("resourceFieldRef"):
            target = container
            if ref.get("containerName"):
                target = next(c for c in pod["spec"]["containers"]
                              if c["name"] == ref["containerName"])
            env[name] = resource_field_ref(target, ref, node_allocatable)
        elif ref := vf.get("secretKeyRef") or vf.get("configMapKeyRef"):
            optional = ref.get("optional", False)
            getter = reader.secret if "secretKeyRef" in vf else reader.configmap
            data = getter(ns, ref["name"], optional)
            if data is None:
                continue
            if ref["key"] not in data:
                if optional:
                    continue
                raise NotReady(f'couldn\'t find key {ref["key"]} in {ref["name"]}')
            env[name] = data[ref["key"]].decode()
        else:
            raise Unsupported(f"env {name}: unsupported valueFrom {sorted(vf)}")
    return env


def command_line(container: dict, env: dict[str, str]) -> list[str]:
    command = container.get("command") or []
    if not command:
        raise Unsupported(
            f'container "{container["name"]}" has no command: the node agent runs no images, so '
            "the command must be given in the Pod spec")
    return [expand(a, env) for a in command + (container.get("args") or [])]


# --- volumes ---------------------------------------------------------------------------------

def _write_items(dir: Path, data: dict[str, bytes], items: list[dict] | None,
                 default_mode: int | None, optional: bool, what: str) -> None:
    mode = default_mode if default_mode is not None else 0o644
    if items:
        chosen = []
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise NotReady(f"{what}: key {it['key']} not found")
            chosen.append((it["path"], data[it["key"]], it.get("mode", mode)))
    else:
        chosen = [(k, v, mode) for k, v in data.items()]
    for rel, content, m in chosen:
        p = dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(m)


def _downward_items(pod: dict, dir: Path, items: list[dict], mode: int | None,
                    allocatable: dict[str, str]) -> None:
    data = {}
    for it in items:
        if ref := it.get("fieldRef"):
            data[it["path"]] = field_ref(pod, ref["fieldPath"]).encode()
        elif ref := it.get("resourceFieldRef"):
            target = next(c for c in pod["spec"]["containers"]
                          if c["name"] == ref.get("containerName", ""))
            data[it["path"]] = resource_field_ref(target, ref, allocatable).encode()
    _write_items(dir, data, None, mode, False, "downwardAPI")


def materialize_volume(pod: dict, vol: dict, dir: Path, reader: Reader,
                       allocatable: dict[str, str]) -> Path:
    """Fill dir with the volume's content; return the host path that mounts bind to."""
    ns = pod["metadata"]["namespace"]
    name = vol["name"]
    dir.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in vol:
        dir.chmod(0o777)  # as the kubelet makes it: writable by whatever user the container runs as
        return dir
    if "hostPath" in vol:
        path = Path(vol["hostPath"]["path"])
        if vol["hostPath"].get("type") in ("DirectoryOrCreate", "", None):
            path.mkdir(parents=True, exist_ok=True)
        return path
    if src := vol.get("configMap"):
        optional = src.get("optional", False)
        data = reader.configmap(ns, src["name"], optional) or {}
        _write_items(dir, data, src.get("items"), src.get("defaultMode"), optional,
                     f"configMap {src['name']}")
        return dir
    if src := vol.get("secret"):
        optional = src.get("optional", False)
        data = reader.secret(ns, src["secretName"], optional) or {}
        _write_items(dir, data, src.get("items"), src.get("defaultMode"), optional,
                     f"secret {src['secretName']}")
        return dir
    if src := vol.get("downwardAPI"):
        _downward_items(pod, dir, src.get("items") or [], src.get("defaultMode"),
                        allocatable)
        return dir
    if src := vol.get("projected"):
        mode = src.get("defaultMode")
        sa = pod["spec"].get("serviceAccountName") or "default"
        for s in src.get("sources") or []:
            if t := s.get("serviceAccountToken"):
                token = reader.token(ns, sa, pod, t.get("audience"),
                                     t.get("expirationSeconds", 3600))
                _write_items(dir, {t["path"]: token.encode()}, None, mode, False, "token")
            elif c := s.get("configMap"):
                opt = c.get("optional", False)
                _write_items(dir, reader.configmap(ns, c["name"], opt) or {}, c.get("items"),
                             mode, opt, f"configMap {c['name']}")
            elif c := s.get("secret"):
                opt = c.get("optional", False)
                _write_items(dir, reader.secret(ns, c["name"], opt) or {}, c.get("items"),
                             mode, opt, f"secret {c['name']}")
            elif c := s.get("downwardAPI"):
                _downward_items(pod, dir, c.get("items") or [], mode, allocatable)
            else:
                raise Unsupported(f"volume {name}: projected source {sorted(s)} not supported")
        return dir
    kinds = sorted(k for k in vol if k != "name")
    raise Unsupported(f"volume {name}: type {kinds} is not supported by the node agent")


@dataclass(frozen=True)
class Mount:
    source: Path  # on the host
    target: str  # where the container sees it
    read_only: bool = False
    is_file: bool = False


def mounts_for(container: dict, volume_paths: dict[str, Path]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        src = volume_paths[vm["name"]]
        if sub := vm.get("subPath"):
            src = src / sub
            if not src.exists():
                src.mkdir(parents=True)
        mounts.append(Mount(src, vm["mountPath"], vm.get("readOnly", False), src.is_file()))
    return mounts
