"""flared: the hermes-flare supervisor daemon."""

__version__ = "0.1.0"
