"""Errors whose message is written for the user (kept free of heavy imports)."""


class ConfigError(ValueError):
    """A config value, path or batch setting that cannot work, named in the message."""
