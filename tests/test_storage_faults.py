"""Object-storage faults through fsspec/s3fs on the localhost S3 endpoint: throttling is retried
with backoff, then one error naming the location (refused credentials, an unreachable endpoint and
interrupted uploads are in test_storage.py)."""

from __future__ import annotations

import pytest
from throttling import Throttle

from s12mae import storage
from s12mae.storage import StorageError

pytest_plugins = ["fixtures_servers"]  # the s3 fixture


def test_throttled_reads_are_retried_then_one_error(s3, monkeypatch):
    import fsspec

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # botocore's own tries per s3fs try (fast test)
    storage.write_bytes(s3.url("data/a.bin"), b"abc" * 100)
    with Throttle(s3.server, f"/{s3.name}/data/a.bin", times=2) as t:
        assert storage.read_bytes(s3.url("data/a.bin")) == b"abc" * 100
    assert t.refused == 2
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no botocore retries: s3fs's own (0.1 s, 0.17 s, ...) remain
    fsspec.AbstractFileSystem.clear_instance_cache()
    with Throttle(s3.server, f"/{s3.name}/data/a.bin", times=1000), pytest.raises(StorageError) as err:
        storage.read_bytes(s3.url("data/a.bin"))
    msg = str(err.value)
    assert s3.url("data/a.bin") in msg and "throttled" in msg and "retries with backoff" in msg, msg
