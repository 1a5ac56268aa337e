"""ragprep: read a phased reference panel, plan windows, and encode it once into a Zarr embedding store."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ragsnv")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
