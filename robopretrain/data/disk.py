"""A disk-backed offline dataset: the sampler interface of :class:`~robopretrain.data.replay.OfflineDataset` with
the images read on demand from a frame index (:mod:`robopretrain.data.frames`).

Everything but the images stays in memory (actions, rewards, dones, returns-to-go, low-dim parts, task ids: about
0.1 KB per transition); each camera's frames are stored once per distinct frame (``next_obs[t]`` equal to
``obs[t + 1]`` shares its row) and read with ``os.pread`` per row, CRC-checked. For the same seed a
:class:`DiskDataset` draws the same indices as an :class:`~robopretrain.data.replay.OfflineDataset` over the same
transitions (``rng.integers(0, size, size=batch)``) and so gives identical batches.

* Prefetch: with ``workers > 0`` the next ``prefetch`` batches are read by a pool of ``workers`` threads while the
  caller trains (``os.pread``, CRC-32 and copies release the GIL). The indices are still drawn in order from the one
  RNG; :meth:`DiskDataset.state_dict` saves the RNG state *before* the first batch not yet handed out, so a resumed
  run gives the same batches as an uninterrupted one.
* DDP: ``rank`` / ``world_size`` give this process the contiguous block ``[rank * N // W, (rank + 1) * N // W)`` of
  the transitions to sample from (disjoint blocks covering the data); :meth:`get` still reads any row.
* Frozen features (``frozen_cached``): :meth:`DiskDataset.map_observations` computes the features of every distinct
  camera frame tuple in chunks and writes them to ``<index>/cache/`` (reused when the same encoder gives the same
  first chunk), so neither the frames nor the features are ever all in memory.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopretrain.data.frames import FrameStore, remove_abandoned_rows, write_rows
from robopretrain.data.keys import NEXT_OBS, OBS, OBS_FIELDS
from robopretrain.data.replay import Batch, _as_storage, _obs_storage, _rng_state, _set_rng_state, _to_torch, _tree_map

log = logging.getLogger(__name__)

FEATURE_CHUNK = 4096  # distinct frames per chunk of the frozen-feature cache


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)``: the block of ``size`` transitions rank ``rank`` of ``world_size`` samples from."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
    lo, hi = rank * size // world_size, (rank + 1) * size // world_size
    if hi <= lo:
        raise ValueError(f"{size} transitions cannot be split over {world_size} processes (an empty shard)")
    return lo, hi


class DiskDataset:
    """Offline transitions with per-frame parts on disk (see the module docstring).

    ``fields``: in-memory arrays as in an OfflineDataset (``observations`` / ``next_observations`` dicts without the
    on-disk parts); ``stores[part]`` a :class:`~robopretrain.data.frames.FrameStore`; ``rows[part]`` int64 ``(2, N)``
    its row of ``obs`` and of ``next_obs`` per transition; ``order`` the observation keys in batch order.
    """

    def __init__(self, fields: Mapping[str, Any], stores: Mapping[str, FrameStore], rows: Mapping[str, np.ndarray],
                 order: Sequence[str], *, device: str | torch.device = "cpu", seed: int = 0, workers: int = 0,
                 prefetch: int = 2, rank: int = 0, world_size: int = 1, cache_dir: Path | None = None) -> None:
        n = len(fields["actions"])
        if n == 0:
            raise ValueError("an offline dataset needs at least one transition")
        for key, r in rows.items():
            if np.shape(r) != (2, n):
                raise ValueError(f"rows of {key} must have shape (2, {n}), got {np.shape(r)}")
        self._fields = {k: (_obs_storage(v) if k in OBS_FIELDS else _tree_map(_as_storage, v))
                        for k, v in fields.items()}
        self.stores = dict(stores)
        self.rows = {k: np.asarray(v, dtype=np.int64) for k, v in rows.items()}
        self.order = list(order)
        self.size = n
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.workers, self.prefetch = int(workers), max(1, int(prefetch))
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard = shard_bounds(n, self.rank, self.world_size)
        self.cache_dir = cache_dir
        self._pool: ThreadPoolExecutor | None = None
        self._queue: collections.deque[tuple[int, dict[str, Any], Future]] = collections.deque()

    def __len__(self) -> int:
        return self.size

    def arrays(self) -> dict[str, Any]:
        """The in-memory numpy arrays (low-dim parts, actions, ...; read-only use); on-disk parts are absent."""
        return self._fields

    # ------------------------------------------------------------------ reading

    def _numpy_rows(self, idx: np.ndarray) -> dict[str, Any]:
        idx = np.asarray(idx, dtype=np.int64)
        out = {k: _tree_map(lambda a: a[idx], v) for k, v in self._fields.items()}
        for field, side in ((OBS, 0), (NEXT_OBS, 1)):
            parts = dict(out[field])
            for key, store in self.stores.items():
                parts[key] = store.read(self.rows[key][side, idx])
            out[field] = {k: parts[k] for k in self.order}
        return out

    def get(self, idx: np.ndarray) -> Batch:
        """The transitions at integer indices ``idx`` (any shard) as a batch of tensors on ``self.device``.

        Raises :class:`~robopretrain.data.hdf5.DatasetError` (one line: file, demo, key) for a corrupt or truncated
        frame file."""
        return {k: _to_torch(v, self.device) for k, v in self._numpy_rows(idx).items()}

    def _draw(self, batch_size: int) -> np.ndarray:
        lo, hi = self.shard
        return lo + self.rng.integers(0, hi - lo, size=batch_size)

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` uniform indices of this rank's shard, with replacement."""
        if self.workers <= 0:
            return self.get(self._draw(batch_size))
        if self._queue and self._queue[0][0] != batch_size:
            self._drop_prefetched()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="disk-dataset")
        while len(self._queue) < self.prefetch + 1:
            state = _rng_state(self.rng)
            self._queue.append((batch_size, state, self._pool.submit(self.get, self._draw(batch_size))))
        _, _, future = self._queue.popleft()
        batch = future.result()
        state = _rng_state(self.rng)
        self._queue.append((batch_size, state, self._pool.submit(self.get, self._draw(batch_size))))
        return batch

    def _drop_prefetched(self) -> None:
        """Forget batches read ahead: the RNG goes back to before the first of them."""
        if self._queue:
            _set_rng_state(self.rng, self._queue[0][1])
        for _, _, future in self._queue:
            future.cancel()
        for _, _, future in self._queue:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - a batch never handed out; its error shows when it is read again
                    pass
        self._queue.clear()

    def close(self) -> None:
        """Stop the prefetch threads (a later ``sample`` starts them again)."""
        self._drop_prefetched()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The sampling RNG state as of the batches handed out (batches read ahead are drawn again on resume)."""
        rng = self._queue[0][1] if self._queue else _rng_state(self.rng)
        return {"size": self.size, "rng": rng, "shard": list(self.shard)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"state is for a dataset of {state['size']} transitions, this one has {self.size}")
        self._drop_prefetched()
        _set_rng_state(self.rng, state["rng"])

    # ------------------------------------------------------------------ frozen features

    def map_observations(self, fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                         seed: int | None = None) -> DiskDataset:
        """The same transitions with ``fn`` applied to the observations (e.g. an agent's
        :meth:`~robopretrain.agent.Agent.prepare`); a new sampling RNG.

        ``fn`` gets chunks of distinct observations (every on-disk part plus the in-memory parts of a transition that
        has them) and must return the in-memory parts unchanged (checked) and new per-frame parts (e.g. ``features``),
        which are written to ``<index>/cache/`` in chunks of :data:`FEATURE_CHUNK` and read from there.
        """
        if self.cache_dir is None:
            raise ValueError("this disk dataset has no cache folder for mapped observations")
        keys = sorted(self.stores)
        # joint rows: one per distinct tuple of frame rows over the on-disk parts (obs and next_obs together)
        tuples = np.concatenate([np.stack([self.rows[k][0] for k in keys], 1),
                                 np.stack([self.rows[k][1] for k in keys], 1)])
        uniq, first, inverse = np.unique(tuples, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        joint_rows = np.stack([inverse[: self.size], inverse[self.size:]])
        memory_keys = list(self._fields[OBS])

        def chunk(lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
            src = first[lo:hi]
            side_next = src >= self.size
            t = np.where(side_next, src - self.size, src)
            obs = {k: np.where(side_next.reshape(-1, *[1] * (self._fields[OBS][k].ndim - 1)),
                               self._fields[NEXT_OBS][k][t], self._fields[OBS][k][t]) for k in memory_keys}
            for j, k in enumerate(keys):
                obs[k] = self.stores[k].read(uniq[lo:hi, j])
            out = fn(obs)
            for k in memory_keys:
                if k not in out or not np.array_equal(np.asarray(out[k]), obs[k]):
                    raise ValueError(f"map_observations: the function changed or dropped the in-memory part {k!r}; "
                                     "only per-frame parts may change on a disk-backed dataset")
            return out, obs

        total = len(uniq)
        head, _ = chunk(0, min(FEATURE_CHUNK, total))
        new_keys = sorted(k for k in head if k not in memory_keys)
        digest = hashlib.sha256(repr((total, new_keys, keys)).encode())
        for k in new_keys:
            digest.update(np.ascontiguousarray(head[k]).tobytes())
        folder = self.cache_dir / "cache" / digest.hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        stores: dict[str, FrameStore] = {}
        for k in new_keys:
            path = folder / f"{k}.bin"
            shape = (total, *np.shape(head[k])[1:])
            dtype = np.asarray(head[k]).dtype
            if not (path.is_file() and path.stat().st_size == int(np.prod(shape)) * dtype.itemsize
                    and path.with_name(path.name + ".crc.npy").is_file()):
                log.info("writing %s of %d distinct frames to %s", k, total, path)

                def chunks(key: str = k):
                    yield np.asarray(head[key])
                    for lo in range(FEATURE_CHUNK, total, FEATURE_CHUNK):
                        yield np.asarray(chunk(lo, min(lo + FEATURE_CHUNK, total))[0][key])

                shape = write_rows(path, chunks())
            else:
                remove_abandoned_rows(path)  # a writer killed outright, rerun at once, found its file too young
            stores[k] = FrameStore(path, shape, dtype, path.with_name(path.name + ".crc.npy"), key=k)
        order = [k for k in head if k in memory_keys or k in new_keys]
        return DiskDataset(self._fields, stores, {k: joint_rows for k in new_keys}, order, device=self.device,
                           seed=int(self.rng.integers(2**31)) if seed is None else seed, workers=self.workers,
                           prefetch=self.prefetch, rank=self.rank, world_size=self.world_size,
                           cache_dir=self.cache_dir)


__all__ = ["DiskDataset", "FEATURE_CHUNK", "shard_bounds"]
