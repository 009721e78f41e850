"""BatonKVCache geometry: right-aligned rows, left growth, relocation, in-place writes, eviction, trim.

The last test drives random sequences of batch edits and forwards against a reference model that
only knows each row's list of real tokens, and checks the cache's masked KV against it after every op.
"""

from __future__ import annotations

import random

import pytest
import torch

from baton.core.errors import CapacityError
from baton.core.models import KVLayout
from decode_worker.kv_cache import BatonKVCache

LAYOUT = KVLayout(num_layers=2, kv_heads=2, head_dim=4)
CAP = 32


def make(max_rows=4, capacity=CAP) -> BatonKVCache:
    return BatonKVCache(LAYOUT, max_rows=max_rows, capacity=capacity, dtype=torch.float32)


_gen = torch.Generator().manual_seed(1234)


def kv(p: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """A handoff-shaped KV ``[layers, 2, kv_heads, p, head_dim]`` of distinct random values."""
    return torch.randn((LAYOUT.num_layers, 2, LAYOUT.kv_heads, p, LAYOUT.head_dim), generator=gen or _gen)


def real_kv(c: BatonKVCache, r: int) -> torch.Tensor:
    """Row ``r``'s real (unmasked) KV in window order, shaped like a handoff."""
    m = c.mask[r, c.start : c.end]
    return torch.stack(
        [
            torch.stack([c.keys[i][r, :, c.start : c.end][:, m], c.values[i][r, :, c.start : c.end][:, m]])
            for i in range(LAYOUT.num_layers)
        ]
    )


def row_mask(c: BatonKVCache, r: int) -> list[bool]:
    return c.mask[r, c.start : c.end].tolist()


def insert(c: BatonKVCache, t: torch.Tensor) -> int:
    c.grow_left(t.shape[3])
    return c.add_row(t)


def step(
    c: BatonKVCache, width: int = 1, new_mask: torch.Tensor | None = None, gen: torch.Generator | None = None
) -> torch.Tensor:
    """One forward of ``width`` columns as the decode batch does it; returns the written KV."""
    c.begin_forward(width)
    n = c.rows
    if new_mask is None:
        new_mask = torch.zeros((n, width), dtype=torch.bool)
        new_mask[:, -1] = True
    c.mask[:n, c.end : c.end + width] = new_mask
    written = kv(width, gen).unsqueeze(0).repeat(n, 1, 1, 1, 1, 1)  # [n, layers, 2, heads, width, dim]
    written += torch.arange(n, dtype=written.dtype).view(n, 1, 1, 1, 1, 1) * 100  # distinct per row
    for i in range(LAYOUT.num_layers):
        kk, vv = c.layers[i].update(written[:, i, 0], written[:, i, 1], i)
        assert kk.shape == (n, LAYOUT.kv_heads, c.length + width, LAYOUT.head_dim)
        assert torch.equal(kk[:, :, -width:], written[:, i, 0])
        assert torch.equal(vv[:, :, -width:], written[:, i, 1])
    c.commit()
    return written


# --------------------------------------------------------------------------- construction
def test_constructor_limits():
    with pytest.raises(ValueError):
        BatonKVCache(LAYOUT, max_rows=0, capacity=8, dtype=torch.float32)
    with pytest.raises(ValueError):
        BatonKVCache(LAYOUT, max_rows=1, capacity=1, dtype=torch.float32)
    c = make()
    assert c.rows == 0 and c.length == 0 and c.relocations == 0
    assert c.keys[0].shape == (4, LAYOUT.kv_heads, CAP, LAYOUT.head_dim)
    assert c.nbytes() == 2 * LAYOUT.num_layers * 4 * LAYOUT.kv_heads * CAP * LAYOUT.head_dim * 4
    assert c.nbytes() == 4 * CAP * LAYOUT.bytes_per_token(4)
    assert len(c.layers) == LAYOUT.num_layers
    assert c.get_seq_length() == 0


# --------------------------------------------------------------------------- add_row / grow_left
def test_add_row_right_aligned_with_mask():
    c = make()
    a, b = kv(5), kv(3)
    assert insert(c, a) == 0
    assert c.length == 5 and c.rows == 1
    assert row_mask(c, 0) == [True] * 5
    for i in range(LAYOUT.num_layers):
        assert torch.equal(c.keys[i][0, :, c.end - 5 : c.end], a[i, 0])
        assert torch.equal(c.values[i][0, :, c.end - 5 : c.end], a[i, 1])
    end = c.end
    assert insert(c, b) == 1
    assert c.end == end and c.length == 5  # a shorter row does not widen the window
    assert row_mask(c, 1) == [False, False, True, True, True]
    for i in range(LAYOUT.num_layers):
        assert torch.equal(c.keys[i][1, :, c.end - 3 : c.end], b[i, 0])
        assert torch.equal(c.values[i][1, :, c.end - 3 : c.end], b[i, 1])
    assert torch.equal(real_kv(c, 0), a) and torch.equal(real_kv(c, 1), b)
    assert c.padding_columns() == 2


def test_add_row_over_stale_slot_masks_old_contents():
    c = make()
    insert(c, kv(6))
    c.remove_row(0)
    short = kv(2)
    insert(c, short)
    assert row_mask(c, 0) == [True, True]
    insert(c, kv(4))  # widens: row 0 is padded
    assert row_mask(c, 0) == [False, False, True, True]
    assert torch.equal(real_kv(c, 0), short)


def test_add_row_longer_than_window_refused():
    c = make()
    insert(c, kv(3))
    with pytest.raises(CapacityError):
        c.add_row(kv(4))  # without grow_left first
    assert c.rows == 1


def test_grow_left_pads_existing_rows():
    c = make()
    a, b = kv(4), kv(2)
    insert(c, a)
    insert(c, b)
    end = c.end
    c.grow_left(7)
    assert c.relocations == 0 and c.end == end and c.length == 7
    assert row_mask(c, 0) == [False] * 3 + [True] * 4
    assert row_mask(c, 1) == [False] * 5 + [True] * 2
    assert torch.equal(real_kv(c, 0), a) and torch.equal(real_kv(c, 1), b)
    c.grow_left(3)  # narrower than the window: no-op
    assert c.length == 7 and c.relocations == 0


def test_grow_left_over_stale_mask_columns():
    # Columns left of the window may hold stale True cells (a trimmed row): growing must clear them.
    c = make()
    insert(c, kv(6))
    b = kv(2)
    insert(c, b)
    c.remove_row(0)
    assert c.trim() == 4
    c.grow_left(6)
    assert row_mask(c, 0) == [False] * 4 + [True] * 2
    assert torch.equal(real_kv(c, 0), b)


def test_grow_left_relocates_when_no_room_and_preserves_rows():
    c = make()
    rows = [kv(c.end), kv(3), kv(1)]  # the first fills everything left of end
    for t in rows:
        insert(c, t)
    masks = [row_mask(c, r) for r in range(3)]
    c.grow_left(c.end + 4)
    assert c.relocations == 1
    assert c.length == len(masks[0]) + 4
    assert c.start >= 0 and c.end < CAP  # room for the next token on the right
    for r, t in enumerate(rows):
        assert row_mask(c, r) == [False] * 4 + masks[r]
        assert torch.equal(real_kv(c, r), t)


def test_grow_left_too_wide():
    c = make()
    insert(c, kv(3))
    with pytest.raises(CapacityError):
        c.grow_left(CAP)  # no room for the next token
    assert c.length == 3 and c.relocations == 0
    c.grow_left(CAP - 1)
    assert c.length == CAP - 1 and c.end == CAP - 1


# --------------------------------------------------------------------------- forward path
def test_write_and_commit():
    c = make()
    a, b = kv(3), kv(2)
    insert(c, a)
    insert(c, b)
    end = c.end
    written = step(c)
    assert c.end == end + 1 and c.length == 4
    assert c.get_seq_length() == 4
    assert c.layers[0].get_mask_sizes(1) == (5, 0)
    assert row_mask(c, 0) == [True] * 4
    assert row_mask(c, 1) == [False, True, True, True]
    for r, t in enumerate((a, b)):
        want = torch.cat([t, written[r, :, :, :, :, :]], dim=3)
        assert torch.equal(real_kv(c, r), want)


def test_write_returns_views_into_buffers():
    c = make()
    insert(c, kv(3))
    c.begin_forward(1)
    c.mask[:1, c.end] = True
    k, v = c.write_layer(0, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4))
    assert k.untyped_storage().data_ptr() == c.keys[0].untyped_storage().data_ptr()
    assert v.untyped_storage().data_ptr() == c.values[0].untyped_storage().data_ptr()
    assert c.live_mask(1).shape == (1, 4)
    assert c.length == 3  # not live until commit
    c.commit()
    assert c.length == 4


def test_write_shape_must_match_reservation():
    c = make()
    insert(c, kv(3))
    insert(c, kv(3))
    c.begin_forward(1)
    with pytest.raises(RuntimeError):
        c.write_layer(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))  # 1 row, batch has 2
    with pytest.raises(RuntimeError):
        c.write_layer(0, torch.zeros(2, 2, 2, 4), torch.zeros(2, 2, 2, 4))  # 2 columns, 1 reserved


def test_begin_forward_relocates_when_right_end_full():
    c = make()
    a = kv(2)
    insert(c, a)
    steps = []
    while c.end < CAP:
        steps.append(step(c)[0])
    assert c.relocations == 0 and c.end == CAP
    before = real_kv(c, 0).clone()
    last = step(c)[0]
    assert c.relocations == 1
    assert c.end < CAP
    assert torch.equal(real_kv(c, 0), torch.cat([before, last], dim=3))
    assert torch.equal(real_kv(c, 0), torch.cat([a, *steps, last], dim=3))


def test_begin_forward_too_wide():
    c = make()
    insert(c, kv(20))
    state = (c.start, c.end, c.relocations)
    with pytest.raises(CapacityError):
        c.begin_forward(CAP - 19)
    assert (c.start, c.end, c.relocations) == state  # refused without touching anything
    step(c, width=CAP - 20)  # exactly full is fine
    assert c.length == CAP


def test_orca_style_prompt_in_forward():
    c = make()
    a = kv(3)
    insert(c, a)
    c.add_empty_rows(2)
    assert c.rows == 3
    assert row_mask(c, 1) == [False] * 3 and row_mask(c, 2) == [False] * 3
    new_mask = torch.tensor([[False, False, False, True], [True] * 4, [False, False, True, True]])
    written = step(c, width=4, new_mask=new_mask)
    assert row_mask(c, 0) == [True] * 3 + [False] * 3 + [True]
    assert row_mask(c, 1) == [False] * 3 + [True] * 4
    assert row_mask(c, 2) == [False] * 5 + [True] * 2
    assert torch.equal(real_kv(c, 0), torch.cat([a, written[0, :, :, :, 3:]], dim=3))
    assert torch.equal(real_kv(c, 1), written[1])
    assert torch.equal(real_kv(c, 2), written[2, :, :, :, 2:])
    assert c.padding_columns() == 3 + 3 + 5


def test_add_empty_rows_capacity():
    c = make(max_rows=3)
    insert(c, kv(2))
    with pytest.raises(CapacityError):
        c.add_empty_rows(3)
    assert c.rows == 1
    c.add_empty_rows(2)
    assert c.rows == 3


def test_too_many_rows():
    c = make(max_rows=2)
    insert(c, kv(2))
    insert(c, kv(2))
    with pytest.raises(CapacityError):
        c.add_row(kv(2))
    assert c.rows == 2


# --------------------------------------------------------------------------- remove_row / trim
def test_remove_row_moves_last_into_hole():
    c = make()
    rows = [kv(2), kv(5), kv(3), kv(4)]
    for t in rows:
        insert(c, t)
    last_mask = row_mask(c, 3)
    assert c.remove_row(1) == 3
    assert c.rows == 3
    assert row_mask(c, 1) == last_mask
    assert torch.equal(real_kv(c, 1), rows[3])
    assert torch.equal(real_kv(c, 0), rows[0]) and torch.equal(real_kv(c, 2), rows[2])
    assert c.remove_row(2) is None  # the last row: nothing moves
    assert c.rows == 2
    assert torch.equal(real_kv(c, 0), rows[0]) and torch.equal(real_kv(c, 1), rows[3])


def test_remove_all_rows_empties_window():
    c = make()
    insert(c, kv(4))
    insert(c, kv(2))
    c.remove_row(0)
    c.remove_row(0)
    assert c.rows == 0 and c.length == 0
    assert c.padding_columns() == 0
    assert c.trim() == 0
    t = kv(3)
    insert(c, t)
    assert c.length == 3 and torch.equal(real_kv(c, 0), t)


def test_trim_drops_only_leading_padding():
    c = make()
    long, short = kv(6), kv(2)
    insert(c, long)
    insert(c, short)
    assert c.trim() == 0  # row 0 is real in the first column
    c.remove_row(0)
    assert c.padding_columns() == 4
    assert c.trim() == 4
    assert c.length == 2 and c.padding_columns() == 0
    assert torch.equal(real_kv(c, 0), short)
    assert c.trim() == 0


def test_trim_keeps_inner_padding():
    c = make()
    a = kv(2)
    insert(c, a)
    # An orca-style 3-wide forward: row 0 gets padding in the middle of its window.
    step(c, width=3, new_mask=torch.tensor([[False, False, True]]))
    assert row_mask(c, 0) == [True, True, False, False, True]
    assert c.trim() == 0
    assert c.length == 5


def test_trim_partial():
    c = make()
    rows = [kv(7), kv(4), kv(2)]
    for t in rows:
        insert(c, t)
    c.remove_row(0)  # row 2 (2 tokens) moves to 0; the longest remaining has 4
    assert c.trim() == 3
    assert c.length == 4
    assert torch.equal(real_kv(c, 0), rows[2]) and torch.equal(real_kv(c, 1), rows[1])


def test_padding_columns():
    c = make()
    assert c.padding_columns() == 0
    insert(c, kv(5))
    insert(c, kv(1))
    insert(c, kv(3))
    assert c.padding_columns() == 0 + 4 + 2
    c.grow_left(8)
    assert c.padding_columns() == 3 + 7 + 5
    step(c)
    assert c.padding_columns() == 3 + 7 + 5


# --------------------------------------------------------------------------- property test
def _token(written: torch.Tensor, r: int, col: int) -> torch.Tensor:
    return written[r, :, :, :, col : col + 1]


def _check(c: BatonKVCache, ref: list[list[torch.Tensor]]) -> None:
    assert c.rows == len(ref)
    assert 0 <= c.start <= c.end <= c.capacity
    if ref:
        assert c.length >= max(sum(t.shape[3] for t in row) for row in ref)
    for r, row in enumerate(ref):
        want = torch.cat(row, dim=3) if row else kv(0)
        assert torch.equal(real_kv(c, r), want), f"row {r}"
    total = sum(t.shape[3] for row in ref for t in row)
    assert c.padding_columns() == c.rows * c.length - total
    assert c.live_mask().shape == (c.rows, c.length)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_reference(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    max_rows = 4
    c = make(max_rows=max_rows, capacity=CAP)
    ref: list[list[torch.Tensor]] = []  # per row: its real KV chunks, in order
    grow_relocs = fwd_relocs = 0
    for _ in range(150):
        op = rng.random()
        if op < 0.3 and c.rows < max_rows:
            p = rng.randint(1, 14)
            t = kv(p, gen)
            before = c.relocations
            try:
                c.grow_left(p)
            except CapacityError:
                _check(c, ref)
                continue
            grow_relocs += c.relocations - before
            assert c.add_row(t) == len(ref)
            ref.append([t])
        elif op < 0.75:
            # A forward: every live row gets one token; maybe some prompts join (orca-style).
            n_old = c.rows
            prompts = [rng.randint(1, 6) for _ in range(rng.randint(0, min(2, max_rows - n_old)))]
            if rng.random() < 0.6:
                prompts = []
            if not prompts and n_old == 0:
                continue
            width = max([1, *prompts])
            c.add_empty_rows(len(prompts))
            n = n_old + len(prompts)
            new_mask = torch.zeros((n, width), dtype=torch.bool)
            new_mask[:n_old, -1] = True
            for j, p in enumerate(prompts):
                new_mask[n_old + j, width - p :] = True
            before = c.relocations
            try:
                c.begin_forward(width)
            except CapacityError:
                assert c.length + width > c.capacity
                for _ in prompts:
                    c.remove_row(c.rows - 1)
                _check(c, ref)
                continue
            fwd_relocs += c.relocations - before
            c.mask[:n, c.end : c.end + width] = new_mask
            written = kv(width, gen).unsqueeze(0).repeat(n, 1, 1, 1, 1, 1)
            written += torch.randn(written.shape, generator=gen)
            for i in range(LAYOUT.num_layers):
                kk, _ = c.write_layer(i, written[:, i, 0], written[:, i, 1])
                assert kk.shape[2] == c.length + width
            c.commit()
            for r in range(n_old):
                ref[r].append(_token(written, r, width - 1))
            for j, p in enumerate(prompts):
                ref.append([written[n_old + j, :, :, :, width - p :]])
        elif c.rows:
            r = rng.randrange(c.rows)
            last = c.rows - 1
            moved = c.remove_row(r)
            assert moved == (None if r == last else last)
            ref[r] = ref[last]
            ref.pop()
            length = c.length
            dropped = c.trim()
            assert c.length == length - dropped
            if c.rows:
                assert bool(c.live_mask()[:, 0].any())  # nothing more to trim
        _check(c, ref)
    assert grow_relocs + fwd_relocs == c.relocations  # nothing else relocates
    # Guard against a vacuous run: rows were relocated by a forward and then checked against the
    # reference (relocation by grow_left does not happen with every seed: the next test forces it).
    assert fwd_relocs > 0


def test_both_relocation_paths_keep_rows():
    # Deterministic scenario hitting grow_left relocation, then begin_forward relocation.
    c = make(capacity=16)
    a = kv(c.end)
    insert(c, a)
    b = kv(c.end + 2)
    insert(c, b)  # grow_left relocates
    assert c.relocations == 1
    toks = []
    while c.relocations == 1:
        toks.append(step(c))
    assert c.relocations == 2
    assert torch.equal(real_kv(c, 0), torch.cat([a, *[t[0] for t in toks]], dim=3))
    assert torch.equal(real_kv(c, 1), torch.cat([b, *[t[1] for t in toks]], dim=3))


def test_remove_row_out_of_range_is_refused():
    layout = KVLayout(num_layers=1, kv_heads=1, head_dim=2)
    c = BatonKVCache(layout, max_rows=2, capacity=8, dtype=torch.float32)
    with pytest.raises(IndexError):
        c.remove_row(0)
