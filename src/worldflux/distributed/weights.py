"""`WeightBroadcaster`: versioned policy weights in a few learner-owned shm segments.

Version v is written into a slot, and its descriptor sent to every collector. A slot holding
version u is reused only once every live collector has reported loading u or a newer version,
so a collector never reads a half-overwritten segment; a collector started later gets the
latest version's descriptor in its start-up spec.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from worldflux.distributed import transport


class WeightBroadcaster:
    """Learner side of the weight flow (see the module docstring)."""

    def __init__(self, namespace: str, slots: int) -> None:
        self.namespace, self.num_slots = namespace, slots
        self.publisher: transport.SlotPublisher | None = None
        self.slot_version: dict[int, int] = {}  # slot -> version it holds
        self.acks: dict[int, int] = {}  # collector -> newest version it loaded (-1: none yet)
        self.version = 0
        self._latest: dict[str, Any] | None = None

    def joined(self, collector: int) -> None:
        """A collector started; it holds no version until it says so (0 if none exists)."""
        self.acks[collector] = -1 if self._latest is not None else 0

    def left(self, collector: int) -> None:
        self.acks.pop(collector, None)

    def acked(self, collector: int, version: int) -> None:
        if collector in self.acks:
            self.acks[collector] = max(self.acks[collector], version)

    def _free_slot(self, live: list[int]) -> int | None:
        for slot in range(self.num_slots):
            if slot not in self.slot_version:
                return slot
        oldest = sorted(self.slot_version.items(), key=lambda kv: kv[1])
        for slot, held in oldest:
            if all(self.acks.get(i, -1) >= held for i in live):
                return slot
        return None

    def can_publish(self, live: list[int]) -> bool:
        """True when a slot can take the next version without tearing a reader."""
        return self._free_slot(live) is not None

    def publish(self, module: nn.Module, live: list[int]) -> dict[str, Any]:
        """Write `module`'s weights as the next version; returns the ``weights`` message."""
        slot = self._free_slot(live)
        if slot is None:
            raise RuntimeError("WeightBroadcaster.publish: no free slot; check can_publish first")
        if self.publisher is None:
            self.publisher = transport.SlotPublisher(self.namespace, self.num_slots)
        self.version += 1
        state = transport.weights_state(module, self.version)
        desc = self.publisher.publish_at(slot, state)
        self.slot_version[slot] = self.version
        self._latest = {"type": "weights", "version": self.version, "desc": desc}
        return self._latest

    def latest_message(self) -> dict[str, Any] | None:
        """The ``weights`` message of the newest version (None before the first)."""
        return self._latest

    def close(self) -> None:
        """Unlink every weight segment."""
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        transport.cleanup(self.namespace)
