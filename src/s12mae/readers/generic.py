"""Any S2/S1 GeoTIFF stacks listed in a CSV or parquet index."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from s12mae.paths import is_url, resolve
from s12mae.readers.base import FolderReader, Item, S2Offset, SensorLayer
from s12mae.sensors import sensors_of_family
from s12mae.times import parse_time

__all__ = ["GenericReader"]


class GenericReader(FolderReader):
    """Samples from an index file (``.csv`` or ``.parquet``), one row per sample.

    Columns: ``id``; ``s2_path`` (a stack holding all bands of ``s2_sensor`` in spec order);
    optional ``s1_path`` (VV, VH stack); ``s2_sensor`` (default: the first S2 sensor of
    ``sensors.yaml``, ``s2_l1c``), ``s1_sensor`` (default ``s1_grd``), ``s2_time``, ``s1_time``
    (any form :func:`s12mae.times.parse_time` reads; the S2 time drives the baseline-04.00 rule
    where the file's tags say nothing). Relative paths are relative to the index file's folder
    (:mod:`s12mae.paths`). The index and the stacks may be on object storage or a web server
    (``s3://``, ``gs://``, ``https://``; stacks read as COGs by byte ranges, see
    :mod:`s12mae.storage`); a relative path in an index at a URL is relative to its folder there. The S2 grid (at 10 m where projected) is the sample grid; S1 is warped
    onto it. A row naming a file that does not exist is a ValueError naming the index file, the
    row and the path (or a skip under ``skip_bad``).

    Args:
        root: the index file.
        sensors: subset of the sensor keys in the index.
        skip_bad, s2_offset: see :class:`RasterReader`.
    """

    source = "generic"
    defaults: ClassVar[dict[str, str]] = {
        f"{family}_sensor": sensors_of_family(family)[0] for family in ("s2", "s1")
    }

    def __init__(self, root: str | Path, sensors: Sequence[str] | None = None, *, skip_bad: bool = False,
                 s2_offset: S2Offset = None) -> None:
        self.url = str(root) if is_url(root) else None  # an index on object storage (Path would fold '//')
        super().__init__(root, sensors, skip_bad=skip_bad, s2_offset=s2_offset)

    @property
    def index(self) -> Path | str:
        """The index file (absolute), or its URL."""
        return self.url or self.root

    @property
    def _name(self) -> str:
        """The index as error messages name it (a URL without signatures or user info)."""
        from s12mae import storage

        return storage.redact(str(self.index))

    def _rows(self) -> list[dict[str, Any]]:
        from s12mae import storage

        where = self._name
        if not storage.exists(self.index):
            raise ValueError(f"{where}: index file not found")
        try:
            with storage.open_input(self.index) as f:
                if str(self.index).endswith(".parquet"):
                    import pyarrow.parquet as pq

                    rows = pq.read_table(f).to_pylist()
                else:
                    rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
        except (OSError, ValueError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{where}: cannot read the index ({err})") from None
        if rows and not {"id", "s2_path"} <= set(rows[0]):
            raise ValueError(f"{self._name}: needs columns 'id' and 's2_path'; it has {sorted(rows[0])}")
        return rows

    def _layer(self, row: dict[str, Any], prefix: str, where: str) -> SensorLayer:
        folder = posixpath.dirname(self.url) if self.url else self.root.parent
        path = resolve(row[f"{prefix}_path"], folder)
        if not is_url(path) and not Path(path).is_file():  # a missing URL is named when it is read
            raise ValueError(f"{where}: {prefix}_path {path} does not exist")
        sensor = row.get(f"{prefix}_sensor", self.defaults[f"{prefix}_sensor"])
        return SensorLayer.stack(sensor, path, parse_time(row.get(f"{prefix}_time")))

    def _discover(self) -> list[Item]:
        items = []
        for row_number, row in enumerate(self._rows()):
            row = {k: v for k, v in row.items() if v not in (None, "")}
            sample_id = f"{self.source}/{row.get('id', row_number)}"
            where = f"{self._name}: row {row_number} (id {row.get('id')})"
            try:
                prefixes = [p for p in ("s2", "s1") if f"{p}_path" in row]
                layers = [self._layer(row, prefix, where) for prefix in prefixes]
                if not layers:
                    raise ValueError(f"{where}: no s2_path")
                items.append(Item(sample_id, layers))
            except (ValueError, KeyError) as err:
                self._bad(
                    sample_id,
                    err
                    if isinstance(err, ValueError)
                    else ValueError(f"{self._name}: row {row_number}: {err}"),
                )
        return items
