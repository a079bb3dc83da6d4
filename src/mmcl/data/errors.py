"""The data layer's error (a leaf module: data sets and decoders raise it without importing
the cache machinery)."""


class DataError(ValueError):
    """A data problem the user can fix: names the file or setting and what to do."""
