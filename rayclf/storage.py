"""Paths and URIs of files rayclf writes: local paths or ``s3://`` / ``gs://`` URIs (pyarrow filesystems).

A leaf: the data cache, checkpoints, the results store and the sweep driver all build on it, and it imports
nothing of rayclf but the user-error type. A URI's query (``?region=…&endpoint_override=…&scheme=…``)
configures its filesystem and never becomes part of an object key: ``join`` puts names before it, and
``to_uri`` turns a path found on that filesystem back into a URI that opens it the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator

import pyarrow.fs as pafs

from rayclf.config import UserError


def split_uri(uri: str) -> tuple[str, str]:
    """(location, query) of a URI; the query is ``""`` when there is none (always for a local path)."""
    if "://" not in uri or "?" not in uri:
        return uri, ""
    location, query = uri.split("?", 1)
    return location, query


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or an ``s3://`` / ``gs://`` URI (its query configures the
    filesystem: region, endpoint_override, scheme, …)."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (ValueError, TypeError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise UserError(f"{uri} is not a storage URI rayclf can open: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str, name: str) -> str:
    """``name`` inside ``base``; a URI keeps its query at the end, where it configures the filesystem."""
    location, query = split_uri(base)
    joined = location.rstrip("/") + "/" + name
    return f"{joined}?{query}" if query else joined


def to_uri(like: str, path: str) -> str:
    """A path of ``like``'s filesystem (as pyarrow lists it: no scheme, no query) as a URI that opens the same
    filesystem ``like`` does: the scheme and query of ``like`` around ``path``. Local paths stay paths."""
    if "://" not in like or "://" in path:
        return path
    scheme = like.split("://", 1)[0]
    query = split_uri(like)[1]
    return f"{scheme}://{path.lstrip('/')}" + (f"?{query}" if query else "")


def write_atomically(uri: str, write: Callable[[pafs.FileSystem, str], None]) -> None:
    """``write`` a hidden temporary file beside ``uri``, then rename it over ``uri``: readers never see half a
    file, and two writers never share a temporary name (results tables, checkpoints, the decoded-dataset
    cache). The name starts with a dot and does not end in ``.parquet``, so table readers (pyarrow, pandas,
    DuckDB globs) skip it.

    On a local disk the file is fsync'd before the rename and its folder after it, so a power loss leaves the
    old file or the whole new one, never an empty or partial file under the final name. Object storage puts
    an object whole (its own atomic step) and has no fsync."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    local = isinstance(fs, pafs.LocalFileSystem)
    created = local and not os.path.isdir(parent)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    try:
        write(fs, tmp)
        if local:
            _fsync(tmp)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    if local:
        _fsync(parent)  # the rename itself
        if created:
            _fsync(os.path.dirname(parent))  # the new folder's entry in its parent


def _fsync(path: str) -> None:
    """Flush a local file's (or folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_text(uri: str, text: str) -> None:
    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(text.encode())

    write_atomically(uri, write)


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def shown(uri: str) -> str:
    """A URI as messages print it: without credentials written into it (``s3://KEY:SECRET@bucket``)."""
    return re.sub(r"://[^/@?]*@", "://", uri)


def _cause(exc: OSError) -> str:
    """An object store's error without the request id noise: what a person can act on."""
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", str(exc)).strip() or type(exc).__name__


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Storage that refuses a read or write (unreachable, forbidden, full) becomes one message naming ``uri``
    and the cause (``UserError``: exit 2, no traceback)."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot use {shown(uri)}: {_cause(exc)}") from None


def check_bucket(uri: str) -> None:
    """Before a sweep starts anything: an object-storage ``uri`` whose endpoint cannot be reached, whose bucket
    does not exist or whose credentials are refused fails here, in one message. Local paths pass."""
    if "://" not in uri:
        return
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    with storage_errors(uri):
        missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    if missing:
        raise UserError(f"cannot use {shown(uri)}: the bucket '{bucket}' does not exist (or these credentials "
                        "cannot see it); create it or choose another --out.")


# ---------------------------------------------------------------------------------------- the plan
PLAN_FILE = "_plan.json"


def write_plan(root: str, trial_ids: set[str]) -> None:
    """The trial ids of the sweep file as last run to the end: readers (report, status, notebooks) list stored
    rows of arms or seeds an edit removed apart instead of mixing them into the tables."""
    import json

    write_text(join(root, PLAN_FILE), json.dumps({"trial_ids": sorted(trial_ids)}))


def read_plan(root: str) -> set[str] | None:
    """The planned trial ids, or None when no run has finished writing them (every row is then planned)."""
    import json

    uri = join(root, PLAN_FILE)
    if not exists(uri):
        return None
    try:
        return set(json.loads(read_text(uri))["trial_ids"])
    except (ValueError, KeyError, TypeError):
        return None
