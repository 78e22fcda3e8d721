"""Paths that files hold (pairs tables, item indexes, sample metadata): one rule to write and read them.

**Stored form** (what a writer puts into a file): a local path is absolute and normalised (no
``.`` or ``..`` parts; links are kept as given, not resolved); a URL (``scheme://...``: ``s3://``,
``gs://``, ``https://``, ``file://``) is kept unchanged. A file written from one working directory
therefore means the same from any other one, and from another process or machine that mounts the
same paths.

**Reading** (what every reader does with a value it finds in a file): a URL is used unchanged; an
absolute path as it is; a relative path (hand-written index files) is relative to the folder of
the file that holds it, never to the working directory.

**Errors** name a path as the user gave it or in its absolute form, never a mix such as
``archive/pairs/../shared/...``.
"""

from __future__ import annotations

import os
import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["absolute", "is_url", "resolve", "resolve_column"]

_URL = r"^[A-Za-z][A-Za-z0-9+.-]*://"


def is_url(value: str | os.PathLike[str]) -> bool:
    """``scheme://...`` (``s3://``, ``gs://``, ``https://``, ``file://``)."""
    return re.match(_URL, os.fspath(value)) is not None


def resolve(value: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """A path read from a file held in ``folder`` -> its stored form (URLs unchanged)."""
    text = os.fspath(value)
    if is_url(text):
        return text
    if is_url(folder) and not os.path.isabs(text):  # a table on object storage: relative to its folder
        scheme, rest = os.fspath(folder).split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, text))}"
    return os.path.normpath(os.path.join(os.path.abspath(folder), text))


def absolute(path: str | os.PathLike[str]) -> str:
    """A path the user gave (relative to the working directory) -> its stored form."""
    return resolve(path, os.curdir)


def resolve_column(values: pa.Array, folder: str | os.PathLike[str]) -> pa.Array:
    """:func:`resolve` over a string column (nulls stay null); vectorised for millions of rows."""
    values = values.cast(pa.string())
    base = os.path.abspath(folder)
    url = pc.match_substring(values, "://")  # cheap test first; the exact pattern only if any
    if pc.any(url).as_py():
        url = pc.and_(url, pc.match_substring_regex(values, _URL))
    relative = pc.and_(pc.invert(pc.starts_with(values, "/")), pc.invert(url))
    joined = pc.if_else(relative, pc.binary_join_element_wise(base, values, "/"), values)
    # a '.' or '..' part, an empty one, or an empty path: normalised in Python (false alarms
    # such as 'a./b' only cost time); URLs are kept
    odd = pc.or_(
        pc.or_(pc.match_substring(values, "./"), pc.ends_with(values, ".")),
        pc.or_(pc.match_substring(values, "//"), pc.equal(values, "")),
    )
    rows = np.flatnonzero(pc.fill_null(pc.and_(odd, pc.invert(url)), False).to_numpy(zero_copy_only=False))
    if not len(rows):
        return joined
    fixed = joined.to_pylist()
    for r in rows:
        fixed[r] = os.path.normpath(fixed[r])
    return pa.array(fixed, pa.string())
