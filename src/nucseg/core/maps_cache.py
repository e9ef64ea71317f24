"""A network's outputs kept on disk, so a stage that runs the same network over the same images
again reads its maps instead of recomputing them: `package`'s int8 check and `evaluate` both
segment `val` with the same network; `evaluate` or `promote` rerun after a change to their own
settings, to the shifted copies or to post-processing recompute only what changed.

The key is the network (a fingerprint of its outputs on a fixed probe) and the exact batch it is
fed. A changed model, data or recipe (preprocessing, the scale an image is brought to, the
test-time views, the tiles) feeds different batches or is a different network: recomputed.
Post-processing thresholds never reach the network, so they reuse the maps. Values are stored as
computed (float32), so a hit returns bit for bit what a miss would have: results never depend on
what the cache held. The least recently used entries go once the cache outgrows its budget.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from nucseg import config
from nucseg.config import get_logger

log = get_logger("nucseg.maps_cache")

PROBE_SIDE = 64  # the fingerprint's input: a fixed random image of this side


class CachedNetwork:
    """Anything with Keras's `predict_on_batch`, its outputs cached under `directory` within
    `max_bytes` (least recently used first out); `directory` None: nothing kept."""

    def __init__(self, network, directory: str | Path | None, max_bytes: int):
        self.network, self.max_bytes = network, int(max_bytes)
        self.directory = Path(directory) if directory is not None and max_bytes > 0 else None
        self.hits = self.misses = 0
        self._fingerprint: str | None = None
        self._written = 0

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        if self.directory is None:
            self.misses += 1
            return self.network.predict_on_batch(batch)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        path = self._path(batch)
        cached = self._read(path)
        if cached is not None:
            self.hits += 1
            return cached
        maps = np.asarray(self.network.predict_on_batch(batch), dtype=np.float32)
        self.misses += 1
        self._write(path, maps)
        return maps

    def summary(self) -> str:
        if self.directory is None:
            return f"maps cache off: {self.misses} network calls computed"
        return f"maps cache {self.directory}: {self.hits} network calls read back, {self.misses} computed"

    def fingerprint(self, channels: int) -> str:
        """Digest of the network's outputs on a fixed seeded probe: another network (other
        weights, another runtime or precision) answers differently."""
        if self._fingerprint is None:
            probe = np.random.default_rng(0).random((1, PROBE_SIDE, PROBE_SIDE, channels), dtype=np.float32)
            answer = np.asarray(self.network.predict_on_batch(probe), dtype=np.float32)
            self._fingerprint = hashlib.blake2b(answer.tobytes(), digest_size=16).hexdigest()
        return self._fingerprint

    def _path(self, batch: np.ndarray) -> Path:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(self.fingerprint(batch.shape[-1]).encode())
        digest.update(repr(batch.shape).encode())
        digest.update(memoryview(batch).cast("B"))
        key = digest.hexdigest()
        return self.directory / key[:2] / f"{key}.npy"

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            maps = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as err:
            log.warning("%s: unreadable cached maps (%s); computing them again", path, err)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: pruned last
        return maps

    def _write(self, path: Path, maps: np.ndarray) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
                np.save(handle, maps, allow_pickle=False)
            os.replace(handle.name, path)  # whole or absent: a reader never sees half a file
        except OSError as err:  # a full or read-only disk costs speed, never the result
            log.warning("%s: cannot keep these maps (%s); carrying on without caching them", path, err)
            return
        self._written += maps.nbytes
        if self._written > self.max_bytes // 10:
            prune(self.directory, self.max_bytes)
            self._written = 0


def prune(directory: str | Path, max_bytes: int) -> int:
    """Delete the least recently used cached maps until `directory` holds at most `max_bytes`;
    returns how many files went."""
    entries = []
    for path in Path(directory).glob("*/*.npy"):
        try:
            status = path.stat()
        except FileNotFoundError:  # pruned by another process meanwhile
            continue
        entries.append((status.st_mtime, status.st_size, path))
    total, removed = sum(size for _, size, _ in entries), 0
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total, removed = total - size, removed + 1
    return removed


def location() -> tuple[Path, int]:
    """The project's cache and its budget in bytes: `NUCSEG_MAPS_CACHE` (a folder; `.cache/maps`
    in the project) and `NUCSEG_MAPS_CACHE_GB` (20; 0 turns it off). Neither changes a result,
    only how much is computed again, so they are settings of the machine, not params."""
    gigabytes = float(os.environ.get("NUCSEG_MAPS_CACHE_GB", "20"))
    return Path(os.environ.get("NUCSEG_MAPS_CACHE") or config.ROOT / ".cache" / "maps"), int(gigabytes * 2**30)


def cached(network) -> CachedNetwork:
    """`network` behind the project's cache (`location`)."""
    return CachedNetwork(network, *location())
