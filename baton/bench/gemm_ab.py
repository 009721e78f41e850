"""A/B of baton's bf16 GEMM source: a git revision's against the working tree's, in one process.

Both sources are built as separate extensions, their outputs checked bit for bit at 1-100 rows, then the
GEMMs of one SmolLM2-135M decode step (4 per layer x 30 layers, and the tied logits) are timed at each
row count, the two builds alternating run by run (this host's speed drifts by up to 2x over minutes)::

    .venv/bin/python -m baton.bench.gemm_ab --base HEAD~1 --rows 8,16,32,64
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import time
from pathlib import Path

import torch

from baton.runtime import _gemm_src, kernels

_BIND = r"""
#include <torch/extension.h>
at::Tensor pack(at::Tensor w) { return bf16_pack(w); }
at::Tensor lin(at::Tensor x, at::Tensor wp, int64_t n) { return bf16_linear(x, wp, n, c10::nullopt); }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("pack", &pack); m.def("lin", &lin); }
"""

# SmolLM2-135M: fused QKV, output, fused gate/up, down (x 30 layers), then the logits.
STEP_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def source_at(rev: str) -> str:
    """``_gemm_src.SOURCE`` as it is at git revision ``rev``."""
    repo = Path(__file__).resolve().parents[2]
    text = subprocess.run(
        ["git", "-C", str(repo), "show", f"{rev}:baton/runtime/_gemm_src.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    space: dict = {}
    exec(compile(text, f"{rev}:_gemm_src.py", "exec"), space)  # a module that only defines SOURCE
    return space["SOURCE"]


def build(source: str):
    from torch.utils.cpp_extension import load_inline

    tag = hashlib.sha256(source.encode()).hexdigest()[:10]
    return load_inline(
        name=f"baton_gemm_ab_{tag}",
        cpp_sources=[source + _BIND],
        extra_cflags=list(kernels.CFLAGS),
        extra_ldflags=list(kernels.LDFLAGS),
    )


def check_same_bits(mods: dict, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for n, k in ((3072, 576), (576, 1536), (960, 576)):
        w = torch.randn(n, k, generator=g).mul(0.02).bfloat16()
        x = torch.randn(100, k, generator=g).bfloat16()
        outs = {name: (m, m.pack(w)) for name, m in mods.items()}
        for rows in range(1, 101):
            ys = [m.lin(x[:rows], p, n) for m, p in outs.values()]
            if not all(torch.equal(ys[0], y) for y in ys[1:]):
                raise SystemExit(f"the builds differ at {rows} rows for [{n}, {k}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the A side (default HEAD)")
    ap.add_argument("--rows", default="8,16,32,64", help="row counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=8, help="timed runs of each build per row count")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    print(f"[gemm_ab] building {args.base} and the working tree", flush=True)
    mods = {args.base: build(source_at(args.base)), "tree": build(_gemm_src.SOURCE)}
    check_same_bits(mods)
    print("[gemm_ab] same bits at 1-100 rows", flush=True)
    g = torch.Generator().manual_seed(1)
    dense = [torch.randn(n, k, generator=g).mul(0.02).bfloat16() for n, k in STEP_SHAPES]
    packed = {name: [m.pack(w) for w in dense] for name, m in mods.items()}

    print(f"| rows | {args.base} ms | tree ms | tree / {args.base} |\n|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        xs = {k: torch.randn(rows, k, generator=g).bfloat16() for k in (576, 1536)}
        times: dict[str, list[float]] = {name: [] for name in mods}
        for _ in range(args.repeats):
            for name, m in mods.items():
                t = time.perf_counter()
                for (n, k), w in zip(STEP_SHAPES, packed[name], strict=True):
                    m.lin(xs[k], w, n)
                times[name].append(time.perf_counter() - t)
        a, b = (statistics.median(sorted(v)[: max(1, len(v) * 2 // 3)]) * 1e3 for v in times.values())
        print(f"| {rows} | {a:.1f} | {b:.1f} | {b / a:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
