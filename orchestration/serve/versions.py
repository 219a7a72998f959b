"""Whole ensemble versions: the board that holds the current one, and how every replica swaps to it.

A version is one complete ensemble: the final checkpoint of every non-empty shard once the first
`number` requests of the ledger were served (requests are served in the order recorded, so the
number names the ensemble: version 4 is the one without the ids of r-0001..r-0004).

The guarantee: predictions come from one version, never a mix, and once a request is reported
done no replica answers with a version that saw its ids. How it holds:

1. The deletion worker publishes a new version to the `VersionBoard` (one small actor per
   service): its number, every constituent's checkpoint key, and the weights of the constituents
   the board does not hold yet (those a deletion retrained); the board keeps every constituent of
   the current version in the object store, and drops the ones it replaced.
2. Each prediction replica follows the board (a long poll, so it hears of a version at once),
   builds the new ensemble aside (only the constituents whose key changed are fetched and built;
   the others are the very models of the version it answers with, which nothing modifies), then
   swaps it in with one assignment under its lock.
   A prediction takes the current ensemble under that lock and holds it until its answer is
   computed, so every answer comes from one version and names it.
3. After the swap the replica waits until no prediction still holds the old ensemble, then
   acknowledges the new version to the board.
4. The worker reports a request done only after the ledger says done and every replica the board
   knows has acknowledged (replicas that died are dropped; a replica that starts later loads the
   current version before it answers anything).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from sisa import aggregate
from sisa.inference import outputs

log = logging.getLogger(__name__)

FOLLOW_TIMEOUT_S = 30.0
"""How long one long poll of the board waits for a new version before asking again."""


class VersionBoard:
    """Holds the current version and who has acknowledged it; made a Ray actor by launch.py."""

    def __init__(self) -> None:
        self._info: dict[str, Any] | None = None
        self._weights: dict[int, Any] = {}  # shard -> [ObjectRef] of its weights in the current version
        self._changed: asyncio.Condition | None = None
        self._replicas: dict[str, dict[str, Any]] = {}  # replica id -> {"handle", "acked"}

    def _condition(self) -> asyncio.Condition:
        # Made on first use, inside the actor's event loop.
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def publish(self, info: dict[str, Any], weights: dict[int, dict[str, torch.Tensor]]) -> None:
        """Make `info` the current version; numbers only grow. `info["keys"]` names every constituent
        (shard -> checkpoint key); `weights` holds those the board does not hold under that key."""
        import ray

        if self._info is not None and info["number"] < self._info["number"]:
            raise ValueError(f"version {info['number']} is older than the current {self._info['number']}")
        held = self._info["keys"] if self._info is not None else {}
        missing = [shard for shard, key in info["keys"].items() if shard not in weights and held.get(shard) != key]
        if missing:
            raise ValueError(f"version {info['number']} lacks the weights of shard(s) {missing}")
        # Each constituent in its own object, so a replica fetches only the ones that changed.
        refs = {shard: [ray.put(weights[shard])] if shard in weights else self._weights[shard] for shard in info["keys"]}
        async with self._condition():
            self._info, self._weights = info, refs
            self._condition().notify_all()

    async def current(self) -> dict[str, Any] | None:
        """The current version's info (None before the first)."""
        return self._info

    async def follow(self, replica: str, handle: Any, known: int | None,
                     timeout: float = FOLLOW_TIMEOUT_S) -> tuple[dict[str, Any], dict[int, Any]] | None:
        """Register `replica` (its actor `handle`, to tell later whether it died) and return the
        current version and its constituents' weights (shard -> [ObjectRef]) once it is not
        `known`; None after `timeout` seconds."""
        self._replicas.setdefault(replica, {"handle": handle, "acked": -1})
        changed = self._condition()

        def news() -> bool:
            return self._info is not None and self._info["number"] != known

        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(news), timeout)
            except TimeoutError:
                return None
            return self._info, self._weights

    async def ack(self, replica: str, number: int) -> None:
        """`replica` answers with version `number` from now on, and with no older one."""
        entry = self._replicas.get(replica)
        if entry is not None:
            entry["acked"] = max(entry["acked"], number)
        async with self._condition():
            self._condition().notify_all()

    async def unacknowledged(self, number: int, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds for every known replica to acknowledge `number`; returns the
        replicas that have not, after dropping those that died."""
        changed = self._condition()

        def missing() -> list[str]:
            return [r for r, entry in self._replicas.items() if entry["acked"] < number]

        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(lambda: not missing()), timeout)
                return []
            except TimeoutError:
                pass
        for replica in missing():
            if not await _alive(self._replicas[replica]["handle"]):
                log.warning("replica %s died without acknowledging version %d; dropped", replica, number)
                del self._replicas[replica]
        return missing()

    async def replicas(self) -> dict[str, int]:
        """Replica id -> the newest version it acknowledged."""
        return {replica: entry["acked"] for replica, entry in self._replicas.items()}


async def _alive(handle: Any) -> bool:
    from ray.exceptions import RayActorError

    try:
        await asyncio.wait_for(handle.__ray_ready__.remote(), 10.0)
    except RayActorError:
        return False
    except TimeoutError:
        return True  # busy, not dead: keep waiting for it
    return True


class ServedEnsemble:
    """One version's constituents, made ready by `sisa.inference.for_inference`."""

    def __init__(self, info: dict[str, Any], models: dict[int, nn.Module], sample_shape: tuple[int, ...], how: str,
                 class_names: list[str] | None = None) -> None:
        """`models`: shard -> constituent, those `info["keys"]` names; `class_names`: the data set's
        names of the labels, when it has them (answered beside the labels)."""
        self.info, self.sample_shape, self.how = info, sample_shape, how
        self.models = dict(sorted(models.items()))  # shard order: the order the run's own ensemble uses
        self.class_names = class_names

    @property
    def keys(self) -> dict[int, str]:
        """Shard -> checkpoint key of each constituent."""
        return dict(self.info.get("keys", {}))

    @property
    def number(self) -> int:
        return int(self.info["number"])

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> dict[str, Any]:
        """Labels (by the run's aggregation) and mean posterior probabilities for inputs (n, features)."""
        if not self.models:
            raise NoVersionError(f"version {self.number} has no model: every training sample was deleted")
        inputs = torch.from_numpy(x).reshape(len(x), *self.sample_shape)
        # Batches bound the activations' memory (a CNN's first layer alone is ~100 KB per sample).
        logits = torch.stack([outputs(model, inputs) for model in self.models.values()])  # (models, samples, classes)
        probabilities = logits.softmax(-1).mean(0)
        labels = aggregate(logits, self.how).tolist()
        answer = {"version": self.number, "labels": labels, "probabilities": probabilities.tolist()}
        if self.class_names is not None:
            answer["classes"] = [self.class_names[label] for label in labels]
        return answer


def reusable(current: ServedEnsemble | None, keys: dict[int, str]) -> dict[int, nn.Module]:
    """The constituents of `current` a version with `keys` (shard -> checkpoint key) shares: same
    shard, same key, so the same checkpoint and the same weights."""
    if current is None:
        return {}
    held = current.keys
    return {shard: model for shard, model in current.models.items() if shard in keys and held.get(shard) == keys[shard]}


class NoVersionError(RuntimeError):
    """The replica has no ensemble yet (the service is starting)."""


class Follower:
    """A prediction replica's side of the board: the ensemble it answers with, kept current."""

    def __init__(self, board: Any, build: Callable[[dict[str, torch.Tensor]], nn.Module],
                 make: Callable[[dict[str, Any], dict[int, nn.Module]], ServedEnsemble], replica: str) -> None:
        """Start following `board`; `build` makes a constituent ready to predict from its weights,
        `make` a ServedEnsemble from a version's info and constituents (shard -> model)."""
        self.board, self.build, self.make, self.replica = board, build, make, replica
        self._lock = threading.Condition()
        self._current: ServedEnsemble | None = None
        self._in_use: Counter[int] = Counter()  # version number -> predictions holding it
        self._stopped = threading.Event()
        threading.Thread(target=self._follow, name="follow-versions", daemon=True).start()

    @contextmanager
    def using(self) -> Iterator[ServedEnsemble]:
        """The current ensemble, held (never swapped away under the caller) for the block."""
        with self._lock:
            ensemble = self._current
            if ensemble is None:
                raise NoVersionError("the service is starting: no ensemble loaded yet")
            self._in_use[ensemble.number] += 1
        try:
            yield ensemble
        finally:
            with self._lock:
                self._in_use[ensemble.number] -= 1
                self._lock.notify_all()

    @property
    def version(self) -> int | None:
        """Number of the version this replica answers with (None before the first)."""
        current = self._current
        return None if current is None else current.number

    def stop(self) -> None:
        self._stopped.set()

    def _swap(self, ensemble: ServedEnsemble) -> None:
        with self._lock:
            old, self._current = self._current, ensemble
            if old is not None and old.number != ensemble.number:
                self._lock.wait_for(lambda: self._in_use[old.number] == 0)
                del self._in_use[old.number]

    def _next(self, info: dict[str, Any], refs: dict[int, Any]) -> ServedEnsemble:
        """The ensemble of version `info`: the current one's constituents where the key is the same,
        the others fetched from the board and built."""
        import ray

        kept = reusable(self._current, info["keys"])
        changed = [shard for shard in info["keys"] if shard not in kept]
        weights = ray.get([refs[shard][0] for shard in changed])
        return self.make(info, {**kept, **{shard: self.build(w) for shard, w in zip(changed, weights)}})

    def _follow(self) -> None:
        import ray

        handle = ray.get_runtime_context().current_actor
        while not self._stopped.is_set():
            try:
                news = ray.get(self.board.follow.remote(self.replica, handle, self.version))
                if news is None:
                    continue
                info, refs = news
                self._swap(self._next(info, refs))
                ray.get(self.board.ack.remote(self.replica, int(info["number"])))
                log.info("replica %s answers with version %d", self.replica, info["number"])
            except Exception:  # noqa: BLE001 - keep following; an unacknowledged version only delays "done"
                log.exception("replica %s could not follow the version board; retrying", self.replica)
                time.sleep(1.0)
