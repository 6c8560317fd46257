"""Datasets, partitioners, long-tail subsampling and partition reports."""

from fedsim.data import dir_balance as _dir_balance  # noqa: F401,E402 (registers it)
from fedsim.data.datasets import (
    DATASETS,
    DatasetArrays,
    load_dataset,
    preload_dataset,
    to_float,
)
from fedsim.data.longtail import longtail_counts, longtail_indices
from fedsim.data.partition import PARTITIONERS, partition_dataset, partition_params
from fedsim.data.report import label_histogram, write_partition_heatmap, write_partition_report

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DatasetArrays",
    "label_histogram",
    "load_dataset",
    "longtail_counts",
    "longtail_indices",
    "partition_dataset",
    "partition_params",
    "preload_dataset",
    "to_float",
    "write_partition_heatmap",
    "write_partition_report",
]
