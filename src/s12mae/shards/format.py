"""The shard-set format (version 1): names, the writer's config, the manifest and the codecs.

A shard set is one folder: ``shard-000000.tar``, ``shard-000001.tar``, ... plus the manifest
``shards.json`` (written last). Sample key = the chip's global index, 12 digits; members sorted
by name::

    000000000513.json               {"id", "scene_id", "index", "crop", "meta"}  (sorted keys)
    000000000513.<sensor>.npy        (C, H, W) file values: S2 int16/uint16 DN (0 = nodata),
                                     S1/DEM float32 or float16 (NaN = nodata)
    000000000513.valid.<sensor>.npy  (C, H, ceil(W / 8)) uint8, ``np.packbits(valid, axis=-1)``
    000000000513.label.<name>.npy    labels as given (cropped with the chip when spatial)

Valid masks are stored packed (1 bit per pixel) rather than re-derived from nodata values: a
reader's mask may hold more than the nodata value says (e.g. pixels outside a warped footprint),
and packing round-trips it exactly for ~1/16 of the int16 payload. Index = shard *
chips_per_shard + position, unique within a shard set and stable across reruns (masks are keyed
by it).

Bytes are canonical: tar headers carry mtime 0, uid/gid 0, no user names, mode 0644; ``.npy`` is
little-endian without pickles; JSON has sorted keys and no spaces, so the same input and config
give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from s12mae import storage
from s12mae.sensors import get_sensor

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "PROGRESS",
    "ShardConfig",
    "is_shard_set",
    "read_manifest",
    "shard_files",
]

FORMAT_VERSION = 1
MANIFEST = "shards.json"
PROGRESS = "shards.progress.json"
SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
MEMBER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")  # a key usable in a tar member name
_INT_DTYPES = ("int16", "uint16")
_FLOAT_DTYPES = ("float32", "float16")


@dataclass
class ShardConfig:
    """How scenes become chips and chips become shards."""

    sensors: list[str] = field(default_factory=lambda: ["s2_l1c"])
    """Sensor keys of this shard set; scenes lacking one of them are left out (and counted)."""
    chip_size: int | None = None
    """Side of a chip in pixels; ``None`` keeps whole scenes (``crop`` must be ``none``)."""
    crop: Literal["none", "grid", "random"] = "none"
    """``grid``: non-overlapping chips row by row from the top-left (the right/bottom remainder is
    dropped); ``random``: ``crops_per_scene`` chips at positions drawn from (seed, scene id)."""
    crops_per_scene: int = 1
    """Chips per scene under ``crop=random``."""
    seed: int = 0
    """Seed of the random crop positions."""
    chips_per_shard: int = 256
    """Chips per shard (the last shard may hold fewer)."""
    dtypes: dict[str, str] = field(default_factory=dict)
    """Storage dtype per sensor (default: the spec's ``file_dtype``): ``int16``/``uint16`` for DN
    sensors, ``float32``/``float16`` for float ones (float16 rounds to half a unit in the last place:
    <= 0.0078 dB where |dB| < 32, <= 0.0156 dB where |dB| < 64)."""
    labels: list[str] | None = None
    """Label keys (``label.*``) to keep; ``None`` keeps every one the samples have."""
    min_valid: float = 0.0
    """Chips whose fraction of valid pixels (all sensors, all bands) is below this are dropped."""
    min_valid_per_sensor: float = 0.01
    """Chips where one sensor's fraction of valid pixels (all its bands) is below this are dropped
    and counted per sensor (ours: 0.01, so an all-nodata S2 or S1 image never becomes a chip)."""

    def __post_init__(self) -> None:
        if not self.sensors or len(set(self.sensors)) != len(self.sensors):
            raise ValueError(f"shards.sensors: need distinct sensor keys, got {self.sensors}")
        for key in self.sensors:
            spec = get_sensor(key)
            dtype = self.dtypes.get(key, spec.file_dtype)
            allowed = _FLOAT_DTYPES if math.isnan(spec.nodata) else _INT_DTYPES
            if dtype not in allowed:
                raise ValueError(f"shards.dtypes: {key} can be stored as {allowed}, got {dtype!r}")
        unknown = sorted(set(self.dtypes) - set(self.sensors))
        if unknown:
            raise ValueError(f"shards.dtypes: names sensor(s) {unknown} that are not in {self.sensors}")
        if self.crop == "none" and self.chip_size is not None:
            raise ValueError("shards.chip_size: set crop to grid or random to cut chips")
        if self.crop != "none" and (self.chip_size is None or self.chip_size < 1):
            raise ValueError(f"shards.chip_size: crop={self.crop} needs a chip size >= 1")
        if self.crops_per_scene < 1 or self.chips_per_shard < 1:
            raise ValueError("shards.crops_per_scene and shards.chips_per_shard must be >= 1")
        if not 0.0 <= self.min_valid <= 1.0:
            raise ValueError(f"shards.min_valid: must be in [0, 1], got {self.min_valid}")
        if not 0.0 <= self.min_valid_per_sensor <= 1.0:
            raise ValueError(f"shards.min_valid_per_sensor: must be in [0, 1], got {self.min_valid_per_sensor}")
        for key in self.labels or []:
            if not key.startswith("label.") or not MEMBER_RE.match(key):
                raise ValueError(f"shards.labels: {key!r} is not a label key (label.<name>)")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True))

    def storage_dtype(self, key: str) -> str:
        return self.dtypes.get(key, get_sensor(key).file_dtype)


# -- the folder -----------------------------------------------------------------------------------


def is_shard_set(path: str | Path | None) -> bool:
    """Whether ``path`` (a folder, or an ``s3://``/``gs://``/``https://`` prefix) is a complete shard
    set (it holds the manifest)."""
    if path is None:
        return False
    if storage.is_url(path):
        return storage.exists(storage.join(path, MANIFEST))
    return (Path(path) / MANIFEST).is_file()


def shard_files(path: str | Path) -> list[Any]:
    """The complete shards of the set at ``path``, in index order (temporaries are not listed):
    :class:`~pathlib.Path` objects in a local folder, URLs under a URL."""
    if storage.is_url(path):
        return storage.list_files(path, SHARD_RE)
    return sorted(p for p in Path(path).iterdir() if SHARD_RE.match(p.name))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest ``shards.json`` of the shard set at ``path`` (a folder or a URL prefix)."""
    file = storage.join(path, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(file))
    except (FileNotFoundError, storage.StorageError) as err:
        if isinstance(err, storage.StorageError) and "not found" not in str(err):
            raise
        raise ValueError(f"{file}: not found; the shard set is incomplete (rerun `s12mae shards`)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format version {manifest.get('format_version')}, this reader reads "
                         f"{FORMAT_VERSION}")
    return manifest


def new_manifest(cfg: ShardConfig, num_input: int, shards: list[dict[str, Any]],
                 counters: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a complete shard set (``shards``: name, samples, bytes, sha256 of each)."""
    sensors = {}
    for key in cfg.sensors:
        spec = get_sensor(key)
        sensors[key] = {"dtype": cfg.storage_dtype(key), "bands": spec.band_names,
                        "nodata": spec.nodata if not math.isnan(spec.nodata) else "nan"}
    return {"format": "s12mae-shards", "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "input_samples": num_input, "sensors": sensors,
            "num_samples": sum(s["samples"] for s in shards), "num_shards": len(shards),
            "shards": shards, "scenes": counters}


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, indent=1).encode()


# -- codecs ---------------------------------------------------------------------------------------


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    x = np.ascontiguousarray(x)
    np.save(buf, x.astype(x.dtype.newbyteorder("<")), allow_pickle=False)  # little-endian always
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    """A writable array from ``.npy`` bytes (no pickles). The header is parsed once per distinct
    header (numpy's parser is ~4x the cost of copying a 120 x 120 chip), then cached."""
    end = 10 + int.from_bytes(data[8:10], "little") if data[6:7] == b"\x01" else 0
    head = _NPY_HEADERS.get(data[:end]) if end else None
    if head is None:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if end and len(_NPY_HEADERS) < 256 and not arr.dtype.hasobject:
            _NPY_HEADERS[data[:end]] = (arr.dtype, arr.shape, bool(arr.flags.f_contiguous and arr.ndim > 1
                                                                    and not arr.flags.c_contiguous))
        return arr
    dtype, shape, fortran = head
    count = math.prod(shape)
    if len(data) - end < count * dtype.itemsize:
        raise ValueError(f"npy data holds {len(data) - end} bytes, the header says {count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=end).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
"""Parsed ``.npy`` version-1 headers (magic through padding) of :func:`npy_load`."""


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def plain(x: Any) -> Any:
    """``x`` as JSON will read it back (lists for tuples and arrays, Python numbers)."""
    return json.loads(json.dumps(x, default=_json_default))


def json_bytes(x: Any) -> bytes:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append file ``name`` holding ``data`` with canonical headers (no time, owner or user)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def chip_members(chip: Mapping[str, Any], index: int, sensors: list[str]) -> list[tuple[str, bytes]]:
    """The tar members ``(name, bytes)`` of one chip (reader format, stored dtypes), sorted by name."""
    key = f"{index:012d}"
    head = {"id": chip["id"], "scene_id": chip["scene_id"], "index": index, "crop": chip["crop"],
            "meta": chip["meta"]}
    members = [(f"{key}.json", json_bytes(head))]
    for sensor in sensors:
        members.append((f"{key}.{sensor}.npy", npy_bytes(chip[sensor])))
        packed = np.packbits(chip[f"valid.{sensor}"], axis=-1)  # (C, H, ceil(W / 8)), big bit order
        members.append((f"{key}.valid.{sensor}.npy", npy_bytes(packed)))
    members += [(f"{key}.{k}.npy", npy_bytes(np.asarray(chip[k]))) for k in chip if k.startswith("label.")]
    return sorted(members)


def unpack_valid(packed: np.ndarray, width: int) -> np.ndarray:
    """A stored valid mask ``(C, H, ceil(W / 8))`` uint8 back to ``(C, H, W)`` bool."""
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A raw sample ``{"json", "<ext>": array}`` of :func:`s12mae.shards.stream.read_shard` in reader
    format: ``{"id", "scene_id", "index", "crop", "meta", <sensor>, "valid.<sensor>" (bool), "label.*"}``."""
    head = raw.get("json") or {}
    sample = {k: head.get(k) for k in ("id", "scene_id", "index", "crop", "meta")}
    for ext, value in raw.items():
        if ext.startswith("__") or ext == "json":
            continue
        key = ext.removesuffix(".npy")
        if key.startswith("valid."):
            value = unpack_valid(value, raw[key.removeprefix("valid.") + ".npy"].shape[-1])
        sample[key] = value
    return sample
