"""Core types shared by every world-model family."""
