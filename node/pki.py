"""The cluster's certificate authority, derived from the cluster key: mTLS with no set-up of its own.

Every key of the cluster keyring (`cynode.cluster_key`) determines one CA: its ECDSA P-256 private
key is HKDF-SHA256 of the cluster key, and its self-signed certificate has fixed fields and a
deterministic (RFC 6979) signature, so every node that holds the key builds the very same CA
certificate, byte for byte, and nobody without the key can sign under it. The raw cluster key never
signs anything: the HKDF label separates this use from gossip's AES-GCM and anything else.

Each node then issues itself a short-lived leaf certificate under the CA of the first key of the
ring: a fresh private key that never leaves memory, the node id as common name and in a
`cynode:node:<id>` URI, each role it runs in a `cynode:role:<role>` URI (what servers authorize a
call by, `cynode.rpc.callers`), and `PEER_NAME` as a DNS name (what clients verify, since peers are dialled
by whatever address gossip or node.toml gave). Servers trust the CAs of every key of the ring, so a
key can be rotated without downtime exactly as gossip's keyring is (docs/security.md).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEER_NAME = "cynode-peer"
"""The DNS name in every leaf certificate; clients verify the server's certificate against it."""
LEAF_LIFETIME = 24 * 3600.0
"""Seconds a leaf certificate is valid; a node issues a new one when half of that has passed."""
_CA_LABEL = b"cynode cluster ca v1"
_CA_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
_CA_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of peers differ a little
_CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # P-256 n


@dataclass(frozen=True)
class ClusterCa:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 of the CA certificate: the same on every node that holds the same key."""
        return hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]


@dataclass(frozen=True)
class Leaf:
    node_id: str
    key_pem: bytes
    certificate_pem: bytes
    not_after: float  # unix seconds


def derive_ca(cluster_key: bytes) -> ClusterCa:
    """The CA that `cluster_key` determines (the same on every node)."""
    seed = HKDF(algorithm=hashes.SHA256(), length=48, salt=None, info=_CA_LABEL).derive(cluster_key)
    key = ec.derive_private_key(int.from_bytes(seed, "big") % (_CURVE_ORDER - 1) + 1, ec.SECP256R1())
    public = key.public_key()
    digest = hashlib.sha256(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cynode"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"cynode cluster CA {digest.hexdigest()[:16]}"),
    ])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(digest.digest()[:16], "big") >> 1 or 1)
        .not_valid_before(_CA_NOT_BEFORE)
        .not_valid_after(_CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return ClusterCa(key, certificate)


def issue_leaf(ca: ClusterCa, node_id: str, *, addresses: tuple[str, ...] = (), roles: tuple[str, ...] = (),
               now: float, lifetime: float = LEAF_LIFETIME) -> Leaf:
    """A new key pair and a certificate for `node_id` under `ca`, valid from a little before `now`
    for `lifetime` seconds. `addresses` (hosts this node is reached at) are added as extra names;
    each of `roles` (those the node runs) as a `cynode:role:<role>` URI, which servers authorize by."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.datetime.fromtimestamp(now, datetime.UTC)
    end = start + datetime.timedelta(seconds=lifetime)
    names: list[x509.GeneralName] = [x509.DNSName(PEER_NAME), x509.UniformResourceIdentifier(node_uri(node_id))]
    names += [x509.UniformResourceIdentifier(role_uri(role)) for role in dict.fromkeys(roles)]
    for host in dict.fromkeys(addresses):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host and host.isascii():
                names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cynode"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Leaf(node_id, key_pem, certificate.public_bytes(serialization.Encoding.PEM), end.timestamp())


def node_uri(node_id: str) -> str:
    return f"cynode:node:{node_id}"


ROLE_URI_PREFIX = "cynode:role:"


def role_uri(role: str) -> str:
    return ROLE_URI_PREFIX + role
