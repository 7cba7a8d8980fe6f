"""adapterkit's release version, in the bottom layer so that any module may record it (the
recipe does) without importing the package's public names."""

__version__ = "0.1.0"
