"""The decode batch's KV cache: preallocated buffers written in place, read through window views.

Layout. Every layer has one key and one value buffer ``[max_rows, kv_heads, capacity, head_dim]``
and the batch shares one boolean mask ``[max_rows, capacity]``. Live rows are ``0..rows-1`` (kept
compact: an evicted row's slot is filled with the last row). Live columns are the window
``[start, end)``: with left padding every row writes its next token at column ``end``.

A decode step writes one column per layer in place and hands the model views of the live
window, so its cost follows the model forward, with no per-step concatenation. The window moves
left when a longer row joins (``grow_left``), its left edge moves right when padding columns
are trimmed, and it is relocated (one copy of the live window) only when it runs out of room
at either end.

transformers reads the mask geometry from ``get_seq_length`` (query offset) and
``get_mask_sizes`` (key length): both speak in window-relative columns.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from baton.core.errors import CapacityError
from baton.core.handoff import CARRIER
from baton.core.models import KVLayout


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Zeroed buffer. On the CPU through calloc (numpy): pages are zero-mapped lazily, so the part
    of the capacity a run never touches costs neither start-up time nor memory."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    import numpy as np

    carrier = CARRIER[str(dtype).removeprefix("torch.")]
    return torch.from_numpy(np.zeros(shape, dtype=carrier)).view(dtype)


class _WindowLayer(CacheLayerMixin):
    """One model layer's view of the shared buffers. Writes go to column ``end`` onwards."""

    is_sliding = False
    is_compileable = False
    supports_early_init = False

    def __init__(self, owner: BatonKVCache, index: int):
        super().__init__()
        self._owner = owner
        self._index = index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # noqa: ARG002  (transformers' signature; buffers are preallocated)
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # noqa: ARG002
        return self._owner.write_layer(self._index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self._owner.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._owner.length + query_length, 0

    def get_max_length(self) -> int:
        return self._owner.capacity


class BatonKVCache(Cache):
    """KV buffers of one decode batch. Owned by exactly one decode worker; no other code writes it."""

    def __init__(
        self,
        layout: KVLayout,
        max_rows: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        if capacity < 2:
            raise ValueError("capacity must be >= 2 columns")
        self.layout = layout
        self.max_rows = max_rows
        self.capacity = capacity
        shape = (max_rows, layout.kv_heads, capacity, layout.head_dim)
        # Zero-filled: a masked column must still hold finite values (0 * NaN is NaN in attention).
        self.keys = [_zeros(shape, dtype, device) for _ in range(layout.num_layers)]
        self.values = [_zeros(shape, dtype, device) for _ in range(layout.num_layers)]
        self.mask = torch.zeros((max_rows, capacity), dtype=torch.bool, device=device)
        self.rows = 0
        self.start = self.end = capacity // 4
        self.relocations = 0
        self._pending = 0  # columns written by the forward in flight, made live by commit()
        super().__init__(layers=[_WindowLayer(self, i) for i in range(layout.num_layers)])

    # ----------------------------------------------------------------- geometry
    @property
    def length(self) -> int:
        """Live window width in columns (padding included)."""
        return self.end - self.start

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def live_mask(self, extra: int = 0) -> torch.Tensor:
        """Mask of live rows over the window plus ``extra`` columns being written this forward."""
        return self.mask[: self.rows, self.start : self.end + extra]

    # ----------------------------------------------------------------- forward path
    def begin_forward(self, width: int) -> None:
        """Make room for ``width`` new columns at ``end`` before a forward pass writes them."""
        if self.end + width > self.capacity:
            self._relocate(new_len=self.length, extra_right=width)
        self._pending = width

    def write_layer(self, index: int, key_states: torch.Tensor, value_states: torch.Tensor):
        n, width = key_states.shape[0], key_states.shape[2]
        if n != self.rows or width != self._pending:
            raise RuntimeError(
                f"cache write of {n} rows x {width} columns does not match the batch "
                f"({self.rows} rows, {self._pending} columns reserved)"
            )
        stop = self.end + width
        k, v = self.keys[index], self.values[index]
        k[:n, :, self.end : stop].copy_(key_states)
        v[:n, :, self.end : stop].copy_(value_states)
        return k[:n, :, self.start : stop], v[:n, :, self.start : stop]

    def fused_window(self, rows: int, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int]:
        """For a forward that writes the buffers itself (the fast runtime's fused forward): the
        per-layer buffers and the window ``[start, end)``; the new columns go at ``end``. Checked
        like ``write_layer``."""
        if rows != self.rows or width != self._pending:
            raise RuntimeError(
                f"cache write of {rows} rows x {width} columns does not match the batch "
                f"({self.rows} rows, {self._pending} columns reserved)"
            )
        return self.keys, self.values, self.start, self.end

    def commit(self) -> None:
        """The forward finished: its columns become part of the window."""
        self.end += self._pending
        self._pending = 0

    # ----------------------------------------------------------------- batch edits between steps
    def grow_left(self, width: int) -> None:
        """Widen the window to at least ``width`` columns by padding every live row on the left."""
        if width <= self.length:
            return
        if width + 1 > self.capacity:
            raise CapacityError(f"a window of {width} columns does not fit a cache of {self.capacity}")
        if self.end - width < 0:
            self._relocate(new_len=width, extra_right=1)
        else:
            new_start = self.end - width
            # Columns entering the window are padding for every live row.
            self.mask[: self.rows, new_start : self.start] = False
            self.start = new_start

    def add_row(self, kv: torch.Tensor) -> int:
        """Append a row whose KV ``[layers, 2, kv_heads, p, head_dim]`` is right-aligned at ``end``.

        The caller grows the window to at least ``p`` first. Returns the row index.
        """
        if self.rows >= self.max_rows:
            raise CapacityError(f"all {self.max_rows} rows are in use")
        p = kv.shape[3]
        if p > self.length:
            raise CapacityError(f"row of {p} columns is longer than the window ({self.length})")
        r = self.rows
        lo = self.end - p
        for i in range(self.layout.num_layers):
            # Old contents of this slot are finite (zeros or an evicted row): masked, not cleared.
            self.keys[i][r, :, lo : self.end].copy_(kv[i, 0])
            self.values[i][r, :, lo : self.end].copy_(kv[i, 1])
        self.mask[r, self.start : lo] = False
        self.mask[r, lo : self.end] = True
        self.rows += 1
        return r

    def add_empty_rows(self, count: int) -> None:
        """Append rows with no cached tokens (their prompt will be computed inside the next forward)."""
        if self.rows + count > self.max_rows:
            raise CapacityError(f"{count} more rows do not fit in {self.max_rows}")
        self.mask[self.rows : self.rows + count, self.start : self.end] = False
        self.rows += count

    def remove_row(self, r: int) -> int | None:
        """Drop row ``r``; the last row moves into its slot. Returns the index that moved, if any."""
        if not 0 <= r < self.rows:
            raise IndexError(f"row {r} is not live (rows: {self.rows})")
        last = self.rows - 1
        moved = None
        if r != last:
            lo, hi = self.start, self.end
            for i in range(self.layout.num_layers):
                self.keys[i][r, :, lo:hi].copy_(self.keys[i][last, :, lo:hi])
                self.values[i][r, :, lo:hi].copy_(self.values[i][last, :, lo:hi])
            self.mask[r, lo:hi] = self.mask[last, lo:hi]
            moved = last
        self.rows -= 1
        if self.rows == 0:
            self.start = self.end  # an empty batch has an empty window
        return moved

    def trim(self) -> int:
        """Drop leading columns that are padding in every live row. Returns how many were dropped."""
        if self.rows == 0 or self.length == 0:
            return 0
        any_real = self.live_mask().any(dim=0)
        first = int(torch.argmax(any_real.to(torch.uint8)))  # all rows have >= 1 real column
        self.start += first
        return first

    def padding_columns(self) -> int:
        """Padded (not real) cells in the live window, for padding-share metrics."""
        if self.rows == 0:
            return 0
        return int(self.rows * self.length - self.live_mask().sum())

    # ----------------------------------------------------------------- internals
    def _relocate(self, new_len: int, extra_right: int) -> None:
        """Move the live window so it is ``new_len`` wide, right-aligned, with room on both sides."""
        if new_len + extra_right > self.capacity:
            raise CapacityError(
                f"window of {new_len} + {extra_right} columns does not fit a cache of {self.capacity}"
            )
        free = self.capacity - new_len - extra_right
        new_end = new_len + free // 4  # a quarter of the spare room on the left, the rest on the right
        old_lo, old_hi, n = self.start, self.end, self.rows
        pad = new_len - (old_hi - old_lo)
        dst_lo = new_end - (old_hi - old_lo)
        if n:
            for buf in self.keys + self.values:
                buf[:n, :, dst_lo:new_end] = buf[:n, :, old_lo:old_hi].clone()
            self.mask[:n, dst_lo:new_end] = self.mask[:n, old_lo:old_hi].clone()
            self.mask[:n, dst_lo - pad : dst_lo] = False
        self.start, self.end = new_end - new_len, new_end
        self.relocations += 1
