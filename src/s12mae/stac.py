"""Search a STAC API for the S2 and S1 items to pair (``s12mae pair --stac URL``).

:func:`search_stac` opens the API with pystac-client, searches the S2 collection and the S1
collection of :class:`StacSearchConfig` (area as ``bbox`` or ``intersects`` GeoJSON, a
``datetime`` interval), follows the ``next`` links page by page and keeps the items that pass the
filters users expect:

- S2: ``eo:cloud_cover <= max_cloud`` (an item without ``eo:cloud_cover`` is dropped when a
  maximum is set);
- S1: ``sar:instrument_mode`` in ``s1_modes`` (IW), ``sar:polarizations`` holding every one of
  ``s1_polarizations`` (VV and VH), and, if set, ``sat:orbit_state`` equal to ``orbit_state``;
- both: an asset for every band of the sensor (:func:`s12mae.stac_items.band_assets`), a time,
  and a new id (an id a server repeats across pages is kept once).

The filters always run here, on every item, so the result does not depend on what a server
supports; where the API conforms to the query extension, the cloud, mode and orbit filters are
also sent with the search (``server_filter``) so fewer pages travel. Collection names and
property names follow the public catalogs (Earth Search ``https://earth-search.aws.element84.com/v1``
and Planetary Computer ``https://planetarycomputer.microsoft.com/api/stac/v1``:
``sentinel-2-l1c``, ``sentinel-2-l2a``, ``sentinel-1-grd``; see :data:`COLLECTION_SENSORS`).

Failures are one :class:`StacError` naming the endpoint (URLs redacted): HTTP 429 and 5xx answers
and dropped connections are retried ``retries`` times with exponential backoff (honouring
``Retry-After``, capped at ``max_wait_s``), then reported with the status and the server's message;
an unreachable API and a landing page that is not a STAC API are reported as such.

:func:`pair_stac` runs the search, pairs with :func:`s12mae.pairing.pair` and writes the pairing
outputs with the items' metadata columns (:mod:`s12mae.stac_items`: processing baseline and DN
offset, per-band asset hrefs) to a local folder or an object-storage URL.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from s12mae import storage
from s12mae.sensors import get_sensor, list_sensors
from s12mae.stac_items import add_item_columns, band_assets, item_table, item_time

__all__ = [
    "COLLECTION_SENSORS",
    "SearchResult",
    "StacApi",
    "StacError",
    "StacSearchConfig",
    "open_client",
    "pair_stac",
    "reject_reason",
    "search_collection",
    "search_stac",
]

log = logging.getLogger(__name__)

COLLECTION_SENSORS = {
    "sentinel-2-l1c": "s2_l1c",  # Earth Search v1, Copernicus Data Space
    "sentinel-2-l2a": "s2_l2a",  # Earth Search v1, Planetary Computer, Copernicus Data Space
    "sentinel-2-c1-l2a": "s2_l2a",  # Earth Search, collection 1 reprocessing
    "sentinel-1-grd": "s1_grd",  # Earth Search v1, Planetary Computer, Copernicus Data Space
    "sentinel-1-rtc": "s1_rtc",  # Planetary Computer
}
"""Public collection names -> sensor keys (others need ``s2_sensor``/``s1_sensor``)."""
RETRY_STATUS = (429, 500, 502, 503, 504)
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?)?)?$",
                   re.IGNORECASE)


class StacError(ValueError):
    """A STAC search failed or found nothing usable; the message names the endpoint."""


@dataclass
class StacSearchConfig:
    """Where and what to search in a STAC API (``s12mae pair --stac URL ...``)."""

    url: str = ""
    """Landing page of the STAC API, e.g. ``https://earth-search.aws.element84.com/v1``."""
    collections: tuple[str, str] = ("sentinel-2-l1c", "sentinel-1-grd")
    """The S2 collection, then the S1 collection, named as in the catalog (the paper pairs L1C
    with GRD; ``sentinel-2-l2a`` for surface reflectance)."""
    bbox: tuple[float, float, float, float] | None = None
    """Area as ``(minlon, minlat, maxlon, maxlat)`` in degrees (``minlon > maxlon`` crosses 180)."""
    intersects: str | dict[str, Any] | None = None
    """Area as GeoJSON: a geometry, Feature or FeatureCollection (its union), given as a dict, a
    JSON string or the path/URL of a ``.geojson`` file. Not together with ``bbox``."""
    datetime: str | None = None
    """Time as RFC 3339: one instant or day (``2021-06-01``) or an interval
    (``2021-01-01/2021-12-31``, ``2021-01-01/..``)."""
    max_cloud: float | None = None
    """Largest S2 ``eo:cloud_cover`` in percent; ``None`` keeps every S2 item."""
    s1_modes: tuple[str, ...] = ("IW",)
    """Accepted S1 ``sar:instrument_mode`` values (IW: the land acquisitions the paper uses)."""
    s1_polarizations: tuple[str, ...] = ("VV", "VH")
    """S1 polarisations an item must all hold in ``sar:polarizations``."""
    orbit_state: Literal["ascending", "descending"] | None = None
    """Keep only S1 items with this ``sat:orbit_state``; ``None`` keeps both directions."""
    s2_sensor: str | None = None
    """Sensor key of the S2 collection; ``None`` looks it up in ``COLLECTION_SENSORS``."""
    s1_sensor: str | None = None
    """Sensor key of the S1 collection; ``None`` looks it up in ``COLLECTION_SENSORS``."""
    page_size: int = 100
    """Items per page asked of the API (``limit``; servers may cap it, ours: 100)."""
    max_items: int | None = None
    """Stop after this many items per collection (before filtering); ``None``: all."""
    server_filter: bool = True
    """Also send the cloud, mode and orbit filters with the search where the API conforms to the
    query extension (the filters are applied here in any case)."""
    require_assets: bool = True
    """Drop items lacking an asset for one of the sensor's bands (chip export needs them all)."""
    method: Literal["auto", "GET", "POST"] = "auto"
    """HTTP method of the search: ``auto`` takes POST where the API advertises it, else GET."""
    retries: int = 4
    """Retries of a request answered 429/5xx or dropped, with exponential backoff (ours)."""
    backoff_s: float = 1.0
    """Backoff factor: waits of 0, 2, 4, 8 ... x ``backoff_s`` seconds between retries (ours)."""
    max_wait_s: float = 60.0
    """Longest wait between two retries, also for a server's ``Retry-After`` (ours)."""
    timeout_s: float = 60.0
    """Seconds to wait for a connection and for each answer (ours)."""

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^/\s]+", self.url or ""):
            raise ValueError(f"stac.url: need the http(s) URL of a STAC API landing page, not {self.url!r}")
        self.collections = tuple(self.collections)  # type: ignore[assignment]
        if len(self.collections) != 2 or not all(self.collections):
            raise ValueError(f"stac.collections: need two names, the S2 then the S1 collection, not "
                             f"{list(self.collections)}")
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("stac.bbox and stac.intersects: give one area, not both")
        if self.bbox is not None:
            self.bbox = tuple(float(v) for v in self.bbox)  # type: ignore[assignment]
            if len(self.bbox) != 4:
                raise ValueError(f"stac.bbox: need minlon, minlat, maxlon, maxlat, not {self.bbox}")
            x0, y0, x1, y1 = self.bbox
            if not (-90 <= y0 <= y1 <= 90 and -180 <= x0 <= 180 and -180 <= x1 <= 180):
                raise ValueError(f"stac.bbox: {self.bbox} is not within -180..180, -90..90 with minlat <= maxlat")
        if self.datetime is not None:
            ends = self.datetime.split("/")
            if len(ends) > 2 or not all(e in ("", "..") or _DATE.match(e) for e in ends):
                raise ValueError(f"stac.datetime: {self.datetime!r} is not RFC 3339 (2021-06-01, "
                                 "2021-01-01/2021-12-31, 2021-01-01/..)")
        if self.max_cloud is not None and not 0 <= self.max_cloud <= 100:
            raise ValueError(f"stac.max_cloud: a percentage in [0, 100], not {self.max_cloud}")
        self.s1_modes = tuple(m.upper() for m in self.s1_modes)
        self.s1_polarizations = tuple(p.upper() for p in self.s1_polarizations)
        if self.orbit_state not in (None, "ascending", "descending"):
            raise ValueError(f"stac.orbit_state: ascending, descending or None, not {self.orbit_state!r}")
        if self.page_size < 1 or (self.max_items is not None and self.max_items < 1):
            raise ValueError("stac.page_size and stac.max_items must be >= 1")
        if self.retries < 0 or self.backoff_s < 0 or self.max_wait_s < 0 or self.timeout_s <= 0:
            raise ValueError("stac.retries, backoff_s, max_wait_s must be >= 0 and timeout_s > 0")
        for side, family in (("s2", "s2"), ("s1", "s1")):
            key = self.sensor(side)
            if get_sensor(key).family != family:
                raise ValueError(f"stac.{side}_sensor: {key} is not a {family.upper()} sensor")

    def collection(self, side: Literal["s2", "s1"]) -> str:
        """The collection searched for ``side``."""
        return self.collections[0 if side == "s2" else 1]

    def sensor(self, side: Literal["s2", "s1"]) -> str:
        """The sensor key of ``side``'s collection."""
        key = self.s2_sensor if side == "s2" else self.s1_sensor
        key = key or COLLECTION_SENSORS.get(self.collection(side))
        if key is None:
            raise ValueError(f"stac.{side}_sensor: collection {self.collection(side)!r} is not one of "
                             f"{sorted(COLLECTION_SENSORS)}; name its sensor ({list_sensors()})")
        return key

    def geometry(self) -> dict[str, Any] | None:
        """The ``intersects`` area as one GeoJSON geometry (dict), or ``None``."""
        if self.intersects is None:
            return None
        obj = self.intersects
        if isinstance(obj, str):
            text = obj if obj.lstrip().startswith("{") else storage.read_bytes(obj).decode()
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"stac.intersects: not valid GeoJSON ({err})") from None
        return _one_geometry(obj)


def _one_geometry(obj: Mapping[str, Any]) -> dict[str, Any]:
    import shapely
    from shapely.geometry import mapping, shape

    kind = obj.get("type")
    if kind == "Feature":
        return _one_geometry(obj.get("geometry") or {})
    if kind == "FeatureCollection":
        geoms = [shape(f["geometry"]) for f in obj.get("features", []) if f.get("geometry")]
        if not geoms:
            raise ValueError("stac.intersects: the FeatureCollection has no geometry")
        return dict(mapping(shapely.union_all(geoms)))
    if kind not in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString"):
        raise ValueError(f"stac.intersects: not a GeoJSON geometry, Feature or FeatureCollection (type {kind!r})")
    return dict(obj)


# -- the API ------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """What the search of one collection found."""

    collection: str
    sensor: str
    items: list[dict[str, Any]] = field(default_factory=list)
    seen: int = 0
    pages: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    server_query: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {"collection": self.collection, "sensor": self.sensor, "seen": self.seen,
                "kept": len(self.items), "pages": self.pages, "dropped": dict(self.dropped)}


class _LastRequest:
    """Remembers the URL of the latest request, so that errors can name the endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, request: Any) -> None:
        self.url = request.url


def _retry(cfg: StacSearchConfig) -> Any:
    from urllib3 import Retry

    class CappedRetry(Retry):
        """urllib3's Retry whose wait for a ``Retry-After`` header is capped by ``backoff_max``."""

        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(after, self.backoff_max)

    n = cfg.retries
    return CappedRetry(total=n, connect=n, read=n, status=n, other=0, backoff_factor=cfg.backoff_s,
                       backoff_max=cfg.max_wait_s, status_forcelist=RETRY_STATUS, allowed_methods=None,
                       raise_on_status=False, respect_retry_after_header=True)


@contextlib.contextmanager
def _api_errors(cfg: StacSearchConfig, last: _LastRequest, doing: str) -> Iterator[None]:
    """pystac-client / requests failures -> one :class:`StacError` naming the endpoint."""
    import pystac
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    try:
        yield
    except APIError as err:
        where = storage.redact(last.url.split("?")[0])
        status = getattr(err, "status_code", None)
        detail = storage.redact(str(err).strip())[:300]
        if status is None:
            raise StacError(f"STAC API {where}: unreachable while {doing} after {cfg.retries} retries "
                            f"({detail})") from None
        if status in (401, 403):
            raise StacError(f"STAC API {where}: access refused (HTTP {status}) while {doing}: {detail}; the API "
                            "wants credentials, and the search sends none (the public catalogs' search needs "
                            "none: check the URL)") from None
        what = "throttled (HTTP 429)" if status == 429 else f"HTTP {status}"
        retried = f" after {cfg.retries} retries with backoff" if status in RETRY_STATUS else ""
        raise StacError(f"STAC API {where}: {what}{retried} while {doing}: {detail}") from None
    except (pystac.STACError, ClientTypeError, json.JSONDecodeError, KeyError, TypeError) as err:
        where = storage.redact(last.url.split("?")[0])
        raise StacError(f"STAC API {where}: not a STAC API answer while {doing} "
                        f"({type(err).__name__}: {storage.redact(str(err))[:200]})") from None


@dataclass
class StacApi:
    """An open STAC API: the pystac-client ``Client`` and the latest request's URL (for errors)."""

    client: Any
    last: _LastRequest

    def conforms_to(self, name: str) -> bool:
        """Whether the API declares the pystac-client conformance class ``name`` (``QUERY``...)."""
        from pystac_client import ConformanceClasses

        return bool(self.client.conforms_to(ConformanceClasses.get_by_name(name)))

    def search_methods(self) -> set[str]:
        """HTTP methods of the landing page's ``search`` links."""
        return {link.extra_fields.get("method") or "GET" for link in self.client.links if link.rel == "search"}


def open_client(cfg: StacSearchConfig) -> StacApi:
    """The STAC API of ``cfg.url`` (pystac-client) with retries, backoff and timeouts."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    last = _LastRequest(cfg.url)
    io_ = StacApiIO(max_retries=_retry(cfg))
    with _api_errors(cfg, last, "reading the landing page"):  # open() sets the modifier and timeout of io_
        api = StacApi(Client.open(cfg.url, stac_io=io_, request_modifier=last, timeout=cfg.timeout_s), last)
    if not api.conforms_to("ITEM_SEARCH"):
        raise StacError(f"STAC API {storage.redact(cfg.url)}: does not offer item search (its conformsTo "
                        "lacks https://api.stacspec.org/v1.0.0/item-search)")
    return api


def _server_query(api: StacApi, cfg: StacSearchConfig, side: str) -> dict[str, Any] | None:
    if not cfg.server_filter or not api.conforms_to("QUERY"):
        return None
    query: dict[str, Any] = {}
    if side == "s2" and cfg.max_cloud is not None:
        query["eo:cloud_cover"] = {"lte": cfg.max_cloud}
    if side == "s1":
        query["sar:instrument_mode"] = {"in": list(cfg.s1_modes)}
        if cfg.orbit_state:
            query["sat:orbit_state"] = {"eq": cfg.orbit_state}
    return query or None


def reject_reason(item: Mapping[str, Any], side: str, cfg: StacSearchConfig) -> str | None:
    """Why an item is left out (a short reason), or ``None`` if it is kept."""
    props = item.get("properties") or {}
    if item_time(item) is None:
        return "no_datetime"
    if side == "s2" and cfg.max_cloud is not None:
        cloud = props.get("eo:cloud_cover")
        if cloud is None:
            return "no_cloud_cover"
        if float(cloud) > cfg.max_cloud:
            return "cloud_cover"
    if side == "s1":
        if str(props.get("sar:instrument_mode", "")).upper() not in cfg.s1_modes:
            return "instrument_mode"
        pols = {str(p).upper() for p in props.get("sar:polarizations") or props.get("sar:polarization") or []}
        if not set(cfg.s1_polarizations) <= pols:
            return "polarizations"
        if cfg.orbit_state and str(props.get("sat:orbit_state", "")).lower() != cfg.orbit_state:
            return "orbit_state"
    if cfg.require_assets:
        spec = get_sensor(cfg.sensor(side))  # type: ignore[arg-type]
        if len(band_assets(item, spec)) < spec.num_channels:
            return "missing_assets"
    return None


def search_collection(api: StacApi, cfg: StacSearchConfig, side: Literal["s2", "s1"]) -> SearchResult:
    """Search ``side``'s collection page by page; keep the items that pass the filters."""
    res = SearchResult(cfg.collection(side), cfg.sensor(side), server_query=_server_query(api, cfg, side))
    method = cfg.method if cfg.method != "auto" else ("POST" if "POST" in api.search_methods() else "GET")
    search = api.client.search(collections=[res.collection], bbox=cfg.bbox, intersects=cfg.geometry(),
                           datetime=cfg.datetime, query=res.server_query, limit=cfg.page_size,
                           max_items=cfg.max_items, method=method)
    ids: set[str] = set()
    with _api_errors(cfg, api.last, f"searching {res.collection}"):
        for page in search.pages_as_dicts():
            res.pages += 1
            for item in page.get("features", []):
                res.seen += 1
                reason = "duplicate" if item.get("id") in ids else reject_reason(item, side, cfg)
                if reason is not None:
                    res.dropped[reason] += 1
                    continue
                ids.add(item["id"])
                res.items.append(item)
            log.debug("%s: page %d, %d items kept of %d", res.collection, res.pages, len(res.items), res.seen)
    log.info("%s: kept %d of %d items (%d pages); dropped %s", res.collection, len(res.items), res.seen,
             res.pages, dict(res.dropped) or "none")
    return res


def search_stac(cfg: StacSearchConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The S2 items and the S1 items (STAC item dicts, as :func:`s12mae.pairing.items_from_stac`
    and :func:`s12mae.stac_items.item_table` take them) that pass the filters of ``cfg``."""
    api = open_client(cfg)
    return search_collection(api, cfg, "s2").items, search_collection(api, cfg, "s1").items


# -- pairing from a search ----------------------------------------------------------------------


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def pair_stac(cfg: StacSearchConfig, out: str, *, quiet: bool = False, **pair_options: Any) -> dict[str, Any]:
    """Search, pair and write ``out/pairs.parquet``, ``out/s2_only.parquet`` (with the items'
    metadata columns, see :mod:`s12mae.stac_items`) and the searched items
    ``out/stac_s2_items.parquet``, ``out/stac_s1_items.parquet`` (a pairing index: a rerun can pair
    them without searching). ``out`` is a folder or an object-storage URL; the items are written
    first and ``pairs.parquet`` last. ``pair_options`` go to :func:`s12mae.pairing.pair`
    (``max_days``, ``min_overlap``, ``match``, ``nearest_days``, ``cell_deg``, ``threads``).

    Returns:
        The pairing statistics with ``stac`` (per collection: seen, kept, pages, dropped by reason)
        and ``outputs``.
    """
    from s12mae.pairing import PairResult, pair, write_outputs

    api = open_client(cfg)
    found = {side: search_collection(api, cfg, side) for side in ("s2", "s1")}  # type: ignore[arg-type]
    for side, res in found.items():
        if not res.items:
            raise StacError(f"STAC API {storage.redact(cfg.url)}: no usable {side.upper()} item in {res.collection} "
                            f"(bbox={cfg.bbox}, intersects={'set' if cfg.intersects else None}, "
                            f"datetime={cfg.datetime}): {res.seen} found, dropped {dict(res.dropped) or 'none'}")
    tables = {side: item_table(res.items, res.sensor) for side, res in found.items()}
    result = pair(tables["s2"], tables["s1"], **pair_options)
    pairs = add_item_columns(add_item_columns(result.pairs, tables["s2"], "s2"), tables["s1"], "s1")
    s2_only = add_item_columns(result.s2_only, tables["s2"], "s2")
    outputs = [storage.write_bytes(storage.join(out, f"stac_{side}_items.parquet"), _parquet_bytes(t))
               for side, t in tables.items()]
    final = PairResult(pairs=pairs, s2_only=s2_only, stats=result.stats)
    if storage.is_url(out):
        outputs += [storage.write_bytes(storage.join(out, name), _parquet_bytes(t))
                    for name, t in (("s2_only.parquet", s2_only), ("pairs.parquet", pairs))]
    else:
        outputs += [str(p) for p in write_outputs(final, out).values()]
    stats = dict(result.stats, stac={"url": storage.redact(cfg.url), **{s: r.summary() for s, r in found.items()}},
                 outputs=[storage.redact(o) for o in outputs])
    if not quiet:
        for res in found.values():
            print(f"{res.collection}: kept {len(res.items)} of {res.seen} items in {res.pages} page(s); "
                  f"dropped {dict(res.dropped) or 'none'}")
        print(f"paired {stats['pairs']} of {stats['s2']} S2 items with {stats['s1_used']} of {stats['s1']} "
              f"S1 items; S2-only {stats['s2_only']}; wrote {storage.redact(str(out))}")
    return stats
