"""Data: layouts on disk -> uint8 tensor cache or file lists -> batches on the device."""

from resnetlab.data.bundle import DataBundle, Split, build_data, plan_data
from resnetlab.data.loader import CachedLoader, FileDataset, StreamLoader
from resnetlab.data.readers.layouts import read_catalog, resolve_root

__all__ = ["CachedLoader", "DataBundle", "FileDataset", "Split", "StreamLoader", "build_data", "plan_data",
           "read_catalog", "resolve_root"]
