"""Credentials for a secure regl federation (docs/flower.md): a certificate authority, the SuperLink's TLS
certificate and key for the names and addresses it is reached at, and one SSH-format EC key pair per SuperNode
(Flower's SuperNode authentication: the SuperLink admits only the public keys registered with
`flwr supernode register`).

    python flower/make_credentials.py OUT --superlink-host superlink.example.org --superlink-host 10.0.0.5 \
        --nodes site-a site-b site-c

writes OUT/ca.crt (give it to every SuperNode and to `flwr`), OUT/superlink.crt and OUT/superlink.key (the
SuperLink's), and OUT/<node>.key / OUT/<node>.pub per SuperNode (the private key stays on that node; the public
one is registered). A real consortium may use its own PKI instead; Flower needs only these files.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def make_credentials(out: Path, hosts: list[str], nodes: list[str], days: int = 365) -> None:
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(_name("regl federation CA")).issuer_name(_name("regl federation CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA384()))
    _write(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))

    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    link_key = ec.generate_private_key(ec.SECP384R1())
    link = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(link_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA384()))
    _write(out / "superlink.crt", link.public_bytes(serialization.Encoding.PEM))
    _write(out / "superlink.key", _pem_key(link_key), private=True)

    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        _write(out / f"{node}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()), private=True)
        _write(out / f"{node}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the files")
    ap.add_argument("--superlink-host", action="append", required=True,
                    help="a name or IP address the SuperNodes and flwr reach the SuperLink at (repeat for several)")
    ap.add_argument("--nodes", nargs="+", default=[], help="one key pair per SuperNode, named so")
    ap.add_argument("--days", type=int, default=365, help="how long the certificates are valid")
    args = ap.parse_args(argv)
    make_credentials(args.out, args.superlink_host, args.nodes, args.days)


if __name__ == "__main__":
    main()
