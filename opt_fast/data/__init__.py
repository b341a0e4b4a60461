"""Offline datasets: D4RL names and files, d4rl's ``qlearning_dataset`` transitions, normalised scores."""
from opt_fast.data.d4rl import (
    OfflineDataset,
    check_env_compatible,
    dataset_info,
    load_dataset,
    load_hdf5,
    qlearning_dataset,
    read_metadata,
)
from opt_fast.data.names import D4RL_FILES, DatasetName, parse_dataset_name, resolve_dataset_path
from opt_fast.data.scores import REF_SCORES, normalized_score, reference_scores

__all__ = [
    "D4RL_FILES",
    "REF_SCORES",
    "DatasetName",
    "OfflineDataset",
    "check_env_compatible",
    "dataset_info",
    "load_dataset",
    "load_hdf5",
    "normalized_score",
    "parse_dataset_name",
    "qlearning_dataset",
    "read_metadata",
    "reference_scores",
    "resolve_dataset_path",
]
