"""The committed gRPC stubs (baton/v1) are what protos/generate.py produces from the .proto today."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path):
    sys.path.insert(0, str(REPO / "protos"))
    try:
        from generate import generate
    finally:
        sys.path.pop(0)
    generate(tmp_path)
    for name in ("generation_pb2.py", "generation_pb2.pyi", "generation_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / "baton" / "v1" / name, REPO / "baton" / "v1" / name, shallow=False), (
            f"baton/v1/{name} is stale: run python protos/generate.py"
        )
