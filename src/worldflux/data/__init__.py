"""Data: the sequence replay buffer (`Replay`) and datasets on disk."""

from worldflux.data.replay import Replay

__all__ = ["Replay"]
