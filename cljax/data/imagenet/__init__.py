"""Prepare ImageNet-1k (or any labelled image dataset) as 28x28 8-bit gray: `prepare-imagenet`.

    SOURCE --plan--> shards --workers--> OUT.partial/{split}-NNNNN.npz --assemble--> OUT (write_prepared)

Modules by job:
  * `decode`: one encoded image -> 28x28 uint8 luma (`image_to_gray`);
  * `shards`: the row readers of each source kind (pyarrow parquet, `datasets` streaming,
    image files) and the `Plan` they make up;
  * `sources`: SOURCE (hub name, parquet export folder, image folder) -> `Plan` (`plan_source`);
  * `prepare`: workers, progress, resume (`prepare_imagenet`) and the command line
    (`prepare_main`);
  * `assemble`: the finished work shards -> the prepared folder, checked (`assemble`);
  * `recorded`: what a prepared folder's meta.json says it was prepared from, against a request
    (`check_same_preparation`).
"""

from cljax.data.imagenet.decode import DRAFT_FACTOR, RESAMPLE_FILTERS, SIZE, image_to_gray
from cljax.data.imagenet.prepare import NAME, is_prepared, prepare_imagenet, prepare_main, process_shard, work_dir_for
from cljax.data.imagenet.shards import DatasetsShard, FilesShard, ParquetShard, Plan, Shard
from cljax.data.imagenet.sources import DEFAULT_SHARD_ROWS, DEFAULT_SPLIT_MAP, OUTPUT_SPLITS, plan_source

__all__ = [
    "DEFAULT_SHARD_ROWS", "DEFAULT_SPLIT_MAP", "DRAFT_FACTOR", "NAME", "OUTPUT_SPLITS", "RESAMPLE_FILTERS", "SIZE",
    "DatasetsShard", "FilesShard", "ParquetShard", "Plan", "Shard",
    "image_to_gray", "is_prepared", "plan_source", "prepare_imagenet", "prepare_main", "process_shard", "work_dir_for",
]
