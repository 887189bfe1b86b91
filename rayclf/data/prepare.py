"""Make a node ready: download, verify and extract a dataset archive once, whatever starts at the same time.

Every trial calls this before it trains, so a node that joins mid-sweep (an autoscaler's new GPU node)
prepares itself. A file lock beside the dataset serialises the trials of one node: the first downloads
(to a hidden partial name, renamed once its md5 is right) and extracts into a hidden temporary folder that is
renamed into place only when complete, so the official folder existing is the completion marker and no
reader ever sees a half-extracted tree. The others wait for the lock and find the folder there.
"""

from __future__ import annotations

import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from rayclf.schema import UserError


class DataError(UserError):
    """A dataset file is missing, corrupt or cannot be downloaded; the message says where to put it."""


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    flat: bool = False  # the archive has no top folder (CINIC-10: train/ valid/ test/ at its root)


def ensure_extracted(archive: Archive, root: Path, folder: str, download: bool) -> bool:
    """Make sure ``root/folder`` exists, complete; True when this call did the work (a cold node)."""
    if (root / folder).is_dir():
        return False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{folder}.lock")):
        if (root / folder).is_dir():  # another trial on this node prepared it while we waited
            return False
        path = root / archive.filename
        where = (f"put the official archive {archive.filename} (from {archive.url}) or the extracted "
                 f"'{folder}' folder in {root}")
        if not path.exists():
            if not download:
                raise DataError(f"dataset folder {root / folder} is missing and data.download is false: {where}.")
            _download(archive, root, where)
        _verify(archive, path, where)
        _extract(archive, path, root, folder, where)
    return True


def _download(archive: Archive, root: Path, where: str) -> None:
    """Download under a hidden partial name; rename it only when complete and checksummed."""
    from torchvision.datasets.utils import download_url

    partial = f".{archive.filename}.{uuid.uuid4().hex}.partial"
    try:
        download_url(archive.url, str(root), partial, md5=archive.md5)
    except Exception as exc:  # offline, DNS, HTTP errors all mean the same to the user
        (root / partial).unlink(missing_ok=True)
        raise DataError(f"could not download {archive.url} ({type(exc).__name__}: {exc}); "
                        f"if this machine is offline, {where}.") from None
    (root / partial).replace(root / archive.filename)


def _verify(archive: Archive, path: Path, where: str) -> None:
    from torchvision.datasets.utils import check_integrity

    if not check_integrity(str(path), archive.md5):
        raise DataError(f"{path} is corrupt or incomplete: its md5 is not the official {archive.md5}; "
                        f"delete it and download again, or {where}.")


def _extract(archive: Archive, path: Path, root: Path, folder: str, where: str) -> None:
    """Extract into a hidden folder beside the target, then rename the finished tree into place."""
    from torchvision.datasets.utils import extract_archive

    tmp = root / f".{folder}.{uuid.uuid4().hex}.partial"
    try:
        extract_archive(str(path), str(tmp))
        done = tmp if archive.flat else tmp / folder
        if not done.is_dir():
            raise DataError(f"{path} holds no '{folder}' folder: {where}.")
        done.rename(root / folder)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {path}: {exc}; delete it and download again, or {where}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
