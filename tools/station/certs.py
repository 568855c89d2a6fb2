"""Throwaway X.509 material for tests and the demo, made with the ``openssl`` command.

``make_pki(directory)`` writes a certificate authority, a broker certificate for 127.0.0.1 and
localhost, a client certificate signed by that authority, and a second, unrelated authority with
a client of its own (what a device from another fab, or an attacker, would present). Keys are
EC P-256: generated in milliseconds, so every test can have its own. Nothing here is fit for a
production PKI: the authority's key sits next to its certificate and lives two days.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and the PEM private key that goes with it."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    server: KeyPair
    client: KeyPair
    rogue_ca: KeyPair
    rogue_client: KeyPair


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    binary = openssl_binary()
    if binary is None:
        raise FileNotFoundError("openssl is not installed (Debian: apt-get install openssl)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def make_ca(directory: Path, name: str) -> KeyPair:
    """A self-signed authority ``name`` (its files: ``{name}.crt``, ``{name}.key``)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req",
        "-x509",
        *_KEY,
        "-nodes",
        "-days",
        DAYS,
        "-subj",
        f"/O=edge-inspect test/CN={name}",
        "-keyout",
        str(pair.key),
        "-out",
        str(pair.cert),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return pair


def issue(ca: KeyPair, directory: Path, name: str, *, server: bool = False, passphrase: str | None = None) -> KeyPair:
    """A leaf certificate with common name ``name``, signed by ``ca``.

    ``server``: for a broker on this host (subjectAltName 127.0.0.1 and localhost, serverAuth);
    otherwise a client certificate (clientAuth). With ``passphrase`` the private key is encrypted
    (AES-256); the passphrase reaches openssl through its environment, not its command line.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    extensions = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={usage}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid:always",
    ]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "req",
        "-new",
        *_KEY,
        "-nodes",
        "-subj",
        f"/O=edge-inspect test/CN={name}",
        "-keyout",
        str(pair.key),
        "-out",
        str(request),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(request),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-set_serial",
        f"0x{secrets.token_hex(16)}",
        "-days",
        DAYS,
        "-extfile",
        str(extensions),
        "-out",
        str(pair.cert),
    )
    if passphrase is not None:
        plain = pair.key.with_suffix(".plain")
        pair.key.rename(plain)
        _openssl(
            "pkey",
            "-in",
            str(plain),
            "-aes256",
            "-passout",
            "env:EDGE_KEY_PASSPHRASE",
            "-out",
            str(pair.key),
            env={**os.environ, "EDGE_KEY_PASSPHRASE": passphrase},
        )
        plain.unlink()
    pair.key.chmod(0o600)
    request.unlink()
    extensions.unlink()
    return pair


def make_pki(directory: Path) -> Pki:
    """Authority, broker and client, plus an authority the broker does not trust and its client."""
    ca = make_ca(directory, "ca")
    rogue_ca = make_ca(directory / "rogue", "rogue-ca")
    return Pki(
        ca=ca,
        server=issue(ca, directory, "broker", server=True),
        client=issue(ca, directory, "edge-ST"),
        rogue_ca=rogue_ca,
        rogue_client=issue(rogue_ca, directory / "rogue", "edge-ST"),
    )


def client_context(ca: Path, pair: KeyPair | None = None) -> ssl.SSLContext:
    """A TLS client context trusting ``ca`` only and, with ``pair``, presenting that certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=os.fspath(ca))
    if pair is not None:
        context.load_cert_chain(os.fspath(pair.cert), os.fspath(pair.key))
    return context
