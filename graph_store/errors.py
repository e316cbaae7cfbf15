"""Errors of the graph store (the store imports nothing of the core, so it has its own)."""


class StoreError(Exception):
    """A store cannot be built, loaded or changed as asked; the message says why."""


class EncoderMismatchError(StoreError):
    """The store was built with vectors of another encoder than the one now in use."""
