"""Data sets (one file each, registered by name; mmcl.plugins imports them), preparation and caching."""
from mmcl.data.batches import to_device
from mmcl.data.errors import DataError
from mmcl.data.prepared import cache_folder, prepare
from mmcl.data.prepared_data import PreparedData
from mmcl.data.splitting import split_samples
from mmcl.data.tuxpaint import TuxPaint

__all__ = ["DataError", "PreparedData", "TuxPaint", "cache_folder", "prepare", "split_samples",
           "to_device"]
