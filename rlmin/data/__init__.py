"""Data pipeline: Minari datasets -> flat episode arrays -> batches of segments.

    from rlmin.data import load_minari, from_minari, SegmentSampler
    data = from_minari(load_minari("rlmin/hopper/medium-v0"))
    batch = SegmentSampler(data, seq_len=20, batch_size=64, seed=0).sample()
"""
from rlmin.data.episodes import STD_FLOOR, DataError, EpisodeData, from_minari
from rlmin.data.minari_io import (
    BEHAVIOUR_RETURN_KEY,
    DatasetNotFoundError,
    check_dataset_id,
    cleanup_on_failure,
    combine_datasets,
    dataset_dir,
    datasets_root,
    delete_local_dataset,
    describe_dataset,
    list_local,
    load_minari,
)
from rlmin.data.sampler import SegmentSampler

__all__ = [
    "BEHAVIOUR_RETURN_KEY", "STD_FLOOR", "DataError", "DatasetNotFoundError", "EpisodeData",
    "SegmentSampler", "check_dataset_id", "cleanup_on_failure", "combine_datasets", "dataset_dir",
    "datasets_root", "delete_local_dataset", "describe_dataset", "from_minari", "list_local",
    "load_minari",
]
