"""WebDataset tar shards of chips: an offline writer and a streaming training loader.

Prepare data offline, training only reads it: :func:`write_shards` cuts reader samples into
chips and writes them to ``shard-000000.tar``, ``shard-000001.tar``, ... plus a manifest
``shards.json``; :func:`shard_loader` streams them back as micro-batches in exactly the format of
:class:`s12mae.data.ArrayDataset`. One folder is one shard set; write the paired set
(``sensors=[s2_l1c, s1_grd]``) and the S2-only set (``sensors=[s2_l1c]``) into separate folders so
alternating gradient descent gives each task its own stream.

Modules: :mod:`~s12mae.shards.format` (the config, the manifest, member names and codecs),
:mod:`~s12mae.shards.write` (chipping and the resumable writer), :mod:`~s12mae.shards.stream`
(:func:`read_samples`, :class:`ShardStream`, the loader).
"""

from s12mae.shards.format import FORMAT_VERSION, ShardConfig, is_shard_set, read_manifest
from s12mae.shards.stream import ShardStream, read_samples, resume_epoch, shard_loader
from s12mae.shards.write import write_shard_set, write_shards
from s12mae.simulate import simulated_samples  # its old place; it lives with the simulator

__all__ = [
    "FORMAT_VERSION",
    "ShardConfig",
    "ShardStream",
    "is_shard_set",
    "read_manifest",
    "read_samples",
    "resume_epoch",
    "shard_loader",
    "simulated_samples",
    "write_shard_set",
    "write_shards",
]

"""The former name of :func:`write_shard_set`, kept while ``cli.py`` and ``tests/test_layouts.py``
call it (issue 9 renames those callers)."""
