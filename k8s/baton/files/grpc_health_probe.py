"""gRPC health check over TLS, for the head pod's probes when the chart's TLS is on.

Kubernetes' native gRPC probes connect without TLS, so they cannot check a TLS-only server.
This script asks grpc.health.v1.Health/Check over TLS and exits 0 only on SERVING.
It needs nothing but grpcio (which Ray already installs): the two tiny protobuf messages are
encoded by hand.

    python grpc_health_probe.py --port 50051 --ca /etc/baton/tls/tls.crt [--service NAME]
"""

from __future__ import annotations

import argparse
import sys

import grpc

SERVING = 1


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service} as protobuf bytes (field 1, length-delimited)."""
    data = service.encode()
    if not data:
        return b""
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


def decode_status(reply: bytes) -> int:
    """The status field (1, varint) of a HealthCheckResponse; 0 (UNKNOWN) when absent."""
    i = 0
    status = 0
    while i < len(reply):
        key = reply[i]
        i += 1
        field, wire = key >> 3, key & 7
        value = 0
        shift = 0
        if wire == 0:
            while True:
                byte = reply[i]
                i += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            if field == 1:
                status = value
        elif wire == 2:
            length = 0
            while True:
                byte = reply[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="the server listens on 0.0.0.0 in the pod")
    parser.add_argument("--service", default="")
    parser.add_argument("--ca", help="PEM file of the certificate or CA to trust; without it, plaintext")
    parser.add_argument("--server-name", default="", help="name to check the certificate against")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    target = f"{args.host}:{args.port}"
    if args.ca:
        with open(args.ca, "rb") as handle:
            credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = check(encode_request(args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"health check failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = decode_status(reply)
    if status != SERVING:
        print(f"not serving (status {status})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
