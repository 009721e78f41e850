"""Small test helpers: free ports, leftover Ray processes, the bad-request table, a TLS certificate."""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import subprocess
import time


# --------------------------------------------------------------------------- ports
def free_port() -> int:
    """A free TCP port on 127.0.0.1 for test servers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- Ray processes
def ray_processes(marker: str | re.Pattern) -> list[str]:
    """Ray system processes (raylet, GCS, dashboard, workers) whose command line contains ``marker``
    (a string, or a pattern to search for)."""
    # -ww: full command lines. Without it ps cuts them to 80 columns when not on a terminal (as under
    # pytest), which drops the session path and made every "nothing left behind" check pass blindly.
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    keys = ("raylet", "gcs_server", "dashboard", "default_worker", "ray::")
    found = marker.search if isinstance(marker, re.Pattern) else (lambda line: marker in line)
    return [line for line in out.splitlines() if found(line) and any(k in line for k in keys)]


def session_of_driver(pid: int) -> re.Pattern:
    """Matches the session of the local Ray cluster that the process ``pid`` started with ray.init()
    (Ray names it ``session_<date>_<time>_<us>_<pid>``): other Ray clusters on the machine do not match."""
    return re.compile(rf"session_[0-9_-]+_{pid}\b")


def wait_gone(marker: str | re.Pattern, timeout: float = 30.0) -> list[str]:
    """Wait until no Ray process matches ``marker``; returns those still there at the deadline."""
    deadline = time.time() + timeout
    while (left := ray_processes(marker)) and time.time() < deadline:
        time.sleep(0.5)
    return left


# --------------------------------------------------------------------------- bad requests
# Invalid requests, as the fields of a JSON request line, and the field the error must name.
# Every entry is invalid for any context length below 600 tokens and any vocabulary below 99999,
# and can be expressed both as a request line (offline engine) and as a gRPC GenerateRequest.
BAD_REQUESTS: list[tuple[dict, str]] = [
    ({"prompt": ""}, "prompt"),
    ({"prompt_token_ids": []}, "prompt"),
    ({"prompt_token_ids": [5] * 600}, "prompt"),  # beyond the context
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "hi", "temperature": -0.5}, "temperature"),
    ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p"),
    ({"prompt": "hi", "top_k": -1}, "top_k"),
    ({"prompt_token_ids": [1, 99999]}, "prompt_token_ids"),  # beyond the vocabulary
    ({"prompt": "hi", "stop": [""]}, "stop"),
]
# Invalid only as a request line: gRPC has no way to send an unknown field.
BAD_REQUEST_LINES: list[tuple[dict, str]] = [
    ({"prompt": "hi", "colour": "red"}, "colour"),
    ({"messages": []}, "messages"),  # once aborted the whole run
]


# --------------------------------------------------------------------------- TLS
def self_signed_cert(dns_names: list[str], ips: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """A self-signed CA certificate for ``dns_names`` (and ``ips``), valid for a day: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


# --------------------------------------------------------------------------- clusters
def tiny_cluster_config(folder, p: int, d: int, **kw):
    """A ClusterConfig for a tiny test model: ``p`` prefill and ``d`` decode workers of half a CPU,
    float32 (as ``tiny_lm``, which the oracle checks against), 300 KV columns per row; ``kw``
    overrides any field."""
    from baton.core.config import ClusterConfig

    fields = {"max_seq_len": 300, "dtype": "float32", "prefill_num_cpus": 0.5, "decode_num_cpus": 0.5, **kw}
    return ClusterConfig(model=str(folder), prefill_workers=p, decode_workers=d, **fields)
