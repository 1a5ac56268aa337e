"""stores: the Zarr v3 embedding store (schema, writer, reader, validation). Knows Zarr and numpy only."""

from stores.errors import StoreError
from stores.reader import EmbeddingStore, MemoryBlock, open_store
from stores.schema import FORMAT_VERSION, StoreMeta
from stores.writer import StoreWriter, create_store

__all__ = ["FORMAT_VERSION", "EmbeddingStore", "MemoryBlock", "StoreError", "StoreMeta", "StoreWriter",
           "create_store", "open_store"]
