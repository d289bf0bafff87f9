"""The package version, in its own module so that nothing imports upward from the package root."""
__version__ = "0.1.0"
