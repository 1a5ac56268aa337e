"""stores: the Zarr v3 embedding store (schema, window plan, writer, reader, validation). Knows Zarr and numpy only."""

from stores.errors import UserError
from stores.plan import WindowPlan
from stores.reader import EmbeddingStore, MemoryBlock, open_store
from stores.schema import FORMAT_VERSION, StoreMeta
from stores.writer import StoreWriter, create_store

__all__ = ["FORMAT_VERSION", "EmbeddingStore", "MemoryBlock", "StoreMeta", "StoreWriter", "UserError", "WindowPlan",
           "create_store", "open_store"]
