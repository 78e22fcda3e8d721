"""Servers that tests start on localhost: a STAC API answering crafted pages, and an S3 endpoint.

Import the fixtures into a test module (``from fixtures_servers import s3, stac_server``). Nothing
here reaches the network.

- :class:`StacServer`: a STAC API (``/``, ``/conformance``, ``/collections``, ``/search`` by GET
  and POST) over item dicts crafted after the public catalogs (:func:`s2_item`, :func:`s1_item`).
  Pages hold at most ``page_cap`` items and link the next page as the STAC API spec says (GET: a
  ``next`` href with a ``token`` parameter; POST: a ``next`` link with ``method`` and ``body``).
  :meth:`StacServer.fail` queues error answers (500, 429 with ``Retry-After``) and
  :attr:`StacServer.requests` records what arrived.
- :class:`S3Server`: moto's S3 (and IAM) backend as a real HTTP endpoint, wrapped so that every
  answer's bytes are counted per request (:attr:`S3Server.log`), with IAM authentication that
  can be switched on (:meth:`S3Server.enforce_auth`) to test refused credentials.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

STAC_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0/item-search#query"
S2_COMMON = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
             "nir09", "cirrus", "swir16", "swir22"]


# -- crafted items (Earth Search v1 / Planetary Computer conventions) --------------------------


def _box(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def s2_item(item_id: str, when: str, bbox: tuple[float, float, float, float], *, cloud: float | None = 10.0,
            baseline: str | None = "04.00", collection: str = "sentinel-2-l1c", convention: str = "earth-search",
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Sentinel-2 item: Earth Search v1 (common-name COG keys plus ``-jp2`` twins, s3:// for
    L1C) or Planetary Computer (``B01``..``B12`` keys, https://) conventions."""
    props: dict[str, Any] = {"datetime": when, "platform": "sentinel-2a", "constellation": "sentinel-2",
                             "instruments": ["msi"], "sat:orbit_state": "descending",
                             "s2:product_uri": f"S2A_MSIL1C_{when[:10].replace('-', '')}T101021_N"
                                               f"{(baseline or '0208').replace('.', '')}_R022_T32TQM.SAFE",
                             "grid:code": "MGRS-32TQM"}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    if baseline is not None:
        props["s2:processing_baseline"] = baseline
    props.update(extra or {})
    if convention == "earth-search":
        root = f"s3://sentinel-s2-l1c/tiles/32/T/QM/{item_id}"
        assets = {}
        for k, name in enumerate(S2_COMMON):
            band = f"B{k + 1:02d}" if k < 8 else ("B8A" if k == 8 else f"B{k:02d}")
            assets[name] = {"href": f"{root}/{band}.tif", "type": "image/tiff; application=geotiff; "
                            "profile=cloud-optimized", "eo:bands": [{"name": name, "common_name": name}],
                            "roles": ["data"]}
            assets[f"{name}-jp2"] = {"href": f"{root}/{band}.jp2", "type": "image/jp2", "roles": ["data"]}
        assets["visual"] = {"href": f"{root}/TCI.tif", "type": "image/tiff",
                            "eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}]}
    else:
        root = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/{item_id}"
        bands = [f"B{i:02d}" for i in range(1, 9)] + ["B8A", "B09", "B10", "B11", "B12"]
        assets = {b: {"href": f"{root}/IMG_DATA/{b}.tif", "type": "image/tiff; application=geotiff; "
                      "profile=cloud-optimized", "eo:bands": [{"name": b}]} for b in bands}
    return _feature(item_id, collection, bbox, props, assets)


def s1_item(item_id: str, when: str, bbox: tuple[float, float, float, float], *, mode: str = "IW",
            pols: tuple[str, ...] = ("VV", "VH"), orbit: str = "ascending",
            collection: str = "sentinel-1-grd") -> dict[str, Any]:
    """A Sentinel-1 GRD item (``vv``/``vh`` COG assets, SAR and SAT extension properties)."""
    props = {"datetime": when, "platform": "sentinel-1a", "constellation": "sentinel-1",
             "sar:instrument_mode": mode, "sar:polarizations": list(pols), "sar:frequency_band": "C",
             "sar:product_type": "GRD", "sat:orbit_state": orbit, "sat:relative_orbit": 117}
    root = f"s3://sentinel-s1-l1c/GRD/{when[:4]}/{item_id}/measurement"
    assets = {p.lower(): {"href": f"{root}/iw-{p.lower()}.tiff", "type": "image/tiff; application=geotiff; "
                          "profile=cloud-optimized", "roles": ["data"]} for p in pols}
    return _feature(item_id, collection, bbox, props, assets)


def _feature(item_id: str, collection: str, bbox: tuple[float, ...], props: dict[str, Any],
             assets: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
            "bbox": list(bbox), "geometry": _box(*bbox), "properties": props, "assets": assets,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/sat/v1.0.0/schema.json"],
            "links": [{"rel": "collection", "href": f"/collections/{collection}"},
                      {"rel": "self", "href": f"/collections/{collection}/items/{item_id}"}]}


# -- the STAC API ---------------------------------------------------------------------------


def _time(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _in_interval(when: str, interval: str | None) -> bool:
    if not interval:
        return True
    ends = interval.split("/")
    t = _time(when)
    lo = None if ends[0] in ("", "..") else _time(ends[0] if "T" in ends[0] else ends[0] + "T00:00:00Z")
    hi_s = ends[-1]
    hi = None if hi_s in ("", "..") else _time(hi_s if "T" in hi_s else hi_s + "T23:59:59Z")
    return (lo is None or t >= lo) and (hi is None or t <= hi)


def _query_ok(props: dict[str, Any], query: dict[str, Any] | None) -> bool:
    ops = {"eq": lambda a, b: a == b, "lte": lambda a, b: a is not None and a <= b,
           "gte": lambda a, b: a is not None and a >= b, "in": lambda a, b: a in b}
    return all(ops[op](props.get(key), val) for key, cond in (query or {}).items() for op, val in cond.items())


class StacServer:
    """A STAC API on localhost (see the module docstring)."""

    def __init__(self, items: list[dict[str, Any]], *, page_cap: int = 2, query: bool = True,
                 methods: tuple[str, ...] = ("GET", "POST")) -> None:
        self.items, self.page_cap, self.methods = items, page_cap, methods
        self.conformance = STAC_CONFORMANCE + ([QUERY_CONFORMANCE] if query else [])
        self.requests: list[dict[str, Any]] = []
        self.faults: list[tuple[str, int, dict[str, str]]] = []
        self.landing_override: Any = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> StacServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(self, path: str, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        """Answer the next requests to ``path`` with these error statuses, one each."""
        self.faults += [(path, s, headers or {}) for s in statuses]

    def searches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == "/search"]

    # -- answers --------------------------------------------------------------------------------
    def landing(self) -> dict[str, Any]:
        if self.landing_override is not None:
            return self.landing_override
        links = [{"rel": "self", "href": f"{self.url}/", "type": "application/json"},
                 {"rel": "root", "href": f"{self.url}/", "type": "application/json"},
                 {"rel": "conformance", "href": f"{self.url}/conformance", "type": "application/json"},
                 {"rel": "data", "href": f"{self.url}/collections", "type": "application/json"}]
        links += [{"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": m}
                  for m in self.methods]
        return {"type": "Catalog", "id": "test-stac-api", "stac_version": "1.0.0",
                "description": "A STAC API served by the test", "conformsTo": self.conformance, "links": links}

    def search(self, params: dict[str, Any], method: str) -> dict[str, Any]:
        shapely = pytest.importorskip("shapely")
        from shapely.geometry import shape

        cols = params.get("collections") or []
        bbox = params.get("bbox")
        area = shape(params["intersects"]) if params.get("intersects") else (shapely.box(*bbox) if bbox else None)
        hits = [it for it in self.items
                if (not cols or it["collection"] in cols)
                and (area is None or area.intersects(shape(it["geometry"])))
                and _in_interval(it["properties"]["datetime"], params.get("datetime"))
                and _query_ok(it["properties"], params.get("query"))]
        start = int(params.get("token") or 0)
        limit = min(int(params.get("limit") or 10), self.page_cap)
        page = hits[start:start + limit]
        links = [{"rel": "root", "href": f"{self.url}/"}]
        if start + limit < len(hits):
            nxt = dict(params, token=str(start + limit))
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST", "body": nxt,
                              "type": "application/geo+json"})
            else:
                links.append({"rel": "next", "href": f"{self.url}/search?{urlencode(_as_query(nxt))}",
                              "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": [self._absolute(it) for it in page], "links": links,
                "numberMatched": len(hits), "numberReturned": len(page)}

    def _absolute(self, item: dict[str, Any]) -> dict[str, Any]:
        """The item with its links absolute, as a real API serves them."""
        links = [dict(link, href=self.url + link["href"]) if link["href"].startswith("/") else link
                 for link in item.get("links", [])]
        return dict(item, links=links)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
                params = _from_query(parse_qs(parts.query)) if method == "GET" else json.loads(body or b"{}")
                with server._lock:
                    server.requests.append({"method": method, "path": parts.path, "params": params})
                    fault = next((f for f in server.faults if f[0] == parts.path), None)
                    if fault is not None:
                        server.faults.remove(fault)
                if fault is not None:
                    _, status, headers = fault
                    return self._send(status, {"code": "ServerError", "description": f"crafted failure {status}"},
                                      headers)
                if parts.path in ("", "/"):
                    return self._send(200, server.landing())
                if parts.path == "/conformance":
                    return self._send(200, {"conformsTo": server.conformance})
                if parts.path == "/collections":
                    ids = sorted({it["collection"] for it in server.items})
                    return self._send(200, {"collections": [{"id": i, "type": "Collection"} for i in ids],
                                            "links": []})
                if parts.path == "/search" and method in server.methods:
                    return self._send(200, server.search(params, method))
                return self._send(404, {"code": "NotFound", "description": f"no {parts.path}"})

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        return Handler


def _as_query(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, (list, tuple)) and k in ("collections", "bbox"):
            out[k] = ",".join(str(x) for x in v)
        elif isinstance(v, dict):
            out[k] = json.dumps(v)
        else:
            out[k] = str(v)
    return out


def _from_query(q: dict[str, list[str]]) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[0] for k, v in q.items()}
    if "collections" in params:
        params["collections"] = params["collections"].split(",")
    if "bbox" in params:
        params["bbox"] = [float(x) for x in params["bbox"].split(",")]
    for k in ("intersects", "query"):
        if k in params:
            params[k] = json.loads(params[k])
    return params


@pytest.fixture
def stac_server() -> Iterator[Any]:
    """A factory: ``stac_server(items, page_cap=2, query=True, methods=("GET", "POST"))``."""
    pytest.importorskip("pystac_client", reason="pystac-client is not installed (pip install pystac-client)")
    started: list[StacServer] = []

    def make(items: list[dict[str, Any]], **kw: Any) -> StacServer:
        started.append(StacServer(items, **kw).start())
        return started[-1]

    yield make
    for s in started:
        s.stop()


# -- the S3 endpoint (moto) -----------------------------------------------------------------


class S3Server:
    """moto's backends behind a real HTTP endpoint on localhost, with a per-request byte count."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log(self, *args: Any) -> None:
                pass

        self.log: list[dict[str, Any]] = []
        app = DomainDispatcherApplication(create_backend_app)
        self._httpd = make_server("127.0.0.1", 0, self._counting(app), threaded=True, request_handler=Quiet)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def _counting(self, app: Any) -> Any:
        def wrapped(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
            entry = {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
                     "range": environ.get("HTTP_RANGE"), "bytes": 0}
            self.log.append(entry)
            for chunk in app(environ, start_response):
                entry["bytes"] += len(chunk)
                yield chunk

        return wrapped

    def bytes_served(self, path: str, method: str = "GET") -> int:
        return sum(e["bytes"] for e in self.log if e["path"] == path and e["method"] == method)

    def enforce_auth(self, on: bool) -> None:
        """Check every request's IAM credentials (``on``) or accept anything (moto's default)."""
        import requests

        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf", timeout=10)

    def stop(self) -> None:
        self._httpd.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 's12mae[s3]')")
    server = S3Server()
    yield server
    server.stop()


class S3Bucket:
    """A fresh bucket on the test endpoint; ``url(key)`` gives ``s3://bucket/key``."""

    def __init__(self, server: S3Server, name: str) -> None:
        self.server, self.name = server, name

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def client(self, **kw: Any) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.server.endpoint, region_name="us-east-1", **kw)


TEST_KEY_ID = "AKIATESTKEYID0000001"
TEST_SECRET = "test-secret-Zq8+never-printed"


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """Environment pointing at the test endpoint (credentials, ``AWS_ENDPOINT_URL``) and a new bucket."""
    import fsspec

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_NO_SIGN_REQUEST", "AWS_REQUEST_PAYER",
                 "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    fsspec.AbstractFileSystem.clear_instance_cache()
    bucket = S3Bucket(s3_server, f"test-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    yield bucket
    s3_server.enforce_auth(False)
    fsspec.AbstractFileSystem.clear_instance_cache()
