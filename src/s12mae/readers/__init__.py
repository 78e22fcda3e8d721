"""Readers of real Sentinel-1/2 data layouts into plain-numpy sample dicts.

One base class (:class:`RasterReader`) holds all shared logic; each layout is a thin subclass
that only finds its files. See :mod:`s12mae.readers.base` for the sample format.
"""

from s12mae.readers.base import (
    BandRef,
    FolderReader,
    Grid,
    Item,
    LabelLayer,
    OffsetSuspectedWarning,
    RasterReader,
    SensorLayer,
    baseline_offset,
    canonical_band,
    offset_evidence,
    parse_time,
)
from s12mae.readers.bigearthnet import (
    BigEarthNetV1Reader,
    BigEarthNetV2Reader,
    bigearthnet_labels,
    multi_hot19,
)
from s12mae.readers.generic import GenericReader
from s12mae.readers.sen1floods11 import Sen1Floods11Reader
from s12mae.readers.ssl4eo import Acquisition, SSL4EOReader
from s12mae.readers.terramesh import TerraMeshReader

__all__ = [
    "Acquisition",
    "BandRef",
    "BigEarthNetV1Reader",
    "BigEarthNetV2Reader",
    "FolderReader",
    "GenericReader",
    "Grid",
    "Item",
    "LabelLayer",
    "OffsetSuspectedWarning",
    "RasterReader",
    "SSL4EOReader",
    "Sen1Floods11Reader",
    "SensorLayer",
    "TerraMeshReader",
    "baseline_offset",
    "bigearthnet_labels",
    "canonical_band",
    "multi_hot19",
    "offset_evidence",
    "parse_time",
]
