"""The PKI a control plane needs: one CA, the API server's serving certificate, client
certificates for each component, and the service-account signing key pair.

Client identities follow the bootstrap RBAC policy, so the stock ClusterRoleBindings apply:
``system:kube-controller-manager``, ``system:kube-scheduler``, and an admin in ``system:masters``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of --service-cluster-ip-range: the `kubernetes` Service's ClusterIP.
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"

VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    dir: Path
    ca: Pair
    apiserver: Pair
    admin: Pair
    controller_manager: Pair
    scheduler: Pair
    sa_key: Path  # private key: token signing (apiserver, controller manager)
    sa_pub: Path  # public key: token verification (apiserver)


def _key():
    # P-256 keys generate in microseconds; RSA would cost a noticeable part of a cold start.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _leaf(
    dir: Path, stem: str, ca_key, ca_cert: x509.Certificate, subject: x509.Name,
    server_names: list[str] | None = None,
) -> Pair:
    key = _key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    b = _builder(subject, ca_cert.subject, key.public_key())
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False,
        ),
        critical=True,
    )
    b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    pair = Pair(dir / f"{stem}.crt", dir / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, pair.key)
    return pair


def make_pki(dir: Path) -> PKI:
    dir.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("cream-operator-test-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = Pair(dir / "ca.crt", dir / "ca.key")
    ca.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, ca.key)

    server_names = [
        "127.0.0.1", "localhost", KUBERNETES_SERVICE_IP, "kubernetes", "kubernetes.default",
        "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
    ]
    apiserver = _leaf(dir, "apiserver", ca_key, ca_cert, _name("kube-apiserver"), server_names)
    admin = _leaf(dir, "admin", ca_key, ca_cert, _name("kubeharness-admin", "system:masters"))
    kcm = _leaf(dir, "controller-manager", ca_key, ca_cert, _name("system:kube-controller-manager"))
    sched = _leaf(dir, "scheduler", ca_key, ca_cert, _name("system:kube-scheduler"))

    # Service-account tokens: RSA, the algorithm every token consumer accepts.
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key, sa_pub = dir / "sa.key", dir / "sa.pub"
    _write_key(sa, sa_key)
    sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return PKI(dir, ca, apiserver, admin, kcm, sched, sa_key, sa_pub)


def serving_pair(pki: PKI, dir: Path, stem: str, names: list[str]) -> Pair:
    """A serving certificate for ``names`` (IPs or DNS names) signed by the cluster's CA, so the
    API server, which trusts that CA, can call a webhook or an extension server on loopback."""
    dir.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    return _leaf(dir, stem, ca_key, ca_cert, _name(names[0]), names)


def self_signed_pair(dir: Path, stem: str, server_names: list[str]) -> Pair:
    """A serving certificate from a one-off CA that nobody else trusts: for a server whose
    clients do not verify it (the API server does not verify kubelets unless told
    --kubelet-certificate-authority)."""
    dir.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name(f"{stem}-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return _leaf(dir, stem, ca_key, ca_cert, _name(stem), server_names)
