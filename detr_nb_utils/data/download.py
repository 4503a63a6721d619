"""Checksummed, resumable downloads: COCO val2017 and the official DETR-R50 checkpoint.

``fetch_file`` streams one URL to ``<dest>.part``, resumes a partial file with an HTTP Range request, checks size and
checksum, then renames the file into place, so ``dest`` either does not exist or is complete and verified.
``download_coco`` fetches the two COCO zips, checks them, unpacks into a temporary folder inside ``root`` and renames
the results into place; ``download_checkpoint`` fetches the weights and checks their size, SHA-384 and SHA-256 prefix
against the published record (:mod:`detr_nb_utils.models.official`, which says where those numbers come from). This
module imports nothing from the package but that standard-library record (a download needs no torch). Used by
``make study`` through the command line::

    python -m detr_nb_utils.data.download coco --root data/coco
    python -m detr_nb_utils.data.download checkpoint --dest data/checkpoints
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..models.official import OFFICIAL

_CHUNK = 1 << 20  # bytes per read
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Asset:
    """One downloadable file: where it lives, how big it is (bytes; None: not known) and its checksums.

    ``members`` names what to unpack from a zip: archive paths, or folder prefixes ending in "/" (``None``: all).
    """

    name: str
    url: str
    size: int | None
    md5: str | None = None
    sha256_prefix: str | None = None
    sha384: str | None = None
    members: tuple[str, ...] | None = None


#: The COCO 2017 files this project needs. Only instances_val2017.json is unpacked from the annotations zip.
COCO_ASSETS: tuple[Asset, ...] = (
    Asset("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", 815_585_330,
          md5="442b8da7639aecaf257c1dceb8ba8c80"),
    Asset("annotations_trainval2017.zip", "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
          252_907_541, md5="f4bbac642086de4f52a3fdda2de5fa2c", members=("annotations/instances_val2017.json",)),
)


#: The official COCO-pretrained DETR-R50 (159 MB): its size and SHA-384 as Intel's Open Model Zoo records them, and
#: the SHA-256 prefix in its name (torch hub's convention); :mod:`detr_nb_utils.models.official`.
CHECKPOINT = Asset(OFFICIAL.name, OFFICIAL.url, OFFICIAL.size, sha256_prefix=OFFICIAL.sha256_prefix,
                   sha384=OFFICIAL.sha384)


class DownloadError(RuntimeError):
    """A download could not finish (server unreachable, interrupted, truncated); re-running resumes it."""


class ChecksumError(ValueError):
    """A downloaded file's size or checksum differs from the expected one; the bad file has been deleted."""


def file_digest(path: Path | str, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib.file_digest``), ``algo`` e.g. "sha256" or "md5"."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes: the checksum of every split file, manifest and download."""
    return file_digest(path, "sha256")


def _check(path: Path, *, md5: str | None, sha256: str | None, sha256_prefix: str | None,
           size: int | None, sha384: str | None = None) -> str | None:
    """Return None if ``path`` matches every given expectation, else a message 'expected X, got Y'."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return f"expected {size} bytes, got {got_size}"
    if md5 is not None and (got := file_digest(path, "md5")) != md5.lower():
        return f"expected md5 {md5}, got {got}"
    if sha384 is not None and (got := file_digest(path, "sha384")) != sha384.lower():
        return f"expected sha384 {sha384}, got {got}"
    if sha256 is not None or sha256_prefix is not None:
        got = file_digest(path, "sha256")
        if sha256 is not None and got != sha256.lower():
            return f"expected sha256 {sha256}, got {got}"
        if sha256_prefix is not None and not got.startswith(sha256_prefix.lower()):
            return f"expected sha256 starting with {sha256_prefix}, got {got}"
    return None


def check_disk_space(folder: Path, needed: int) -> None:
    """Raise ``OSError`` naming ``folder`` if fewer than ``needed`` bytes are free there."""
    folder = Path(folder)
    probe = folder if folder.exists() else next(p for p in folder.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OSError(f"not enough disk space in {folder}: {needed:,} bytes needed, {free:,} free. "
                      f"Free some space or choose another folder, then re-run.")


def _open(url: str, start: int) -> http.client.HTTPResponse | None:
    """Open ``url`` from byte ``start``; None if the server says the range is past the end (HTTP 416)."""
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(req, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: the partial file is already whole (or longer)
            return None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. Check the URL, then re-run.") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {url} ({reason}). Check the network and re-run; "
                            f"a partial download resumes where it stopped.") from e


def _stream(url: str, part: Path, size: int | None, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (restarting if the server ignores the Range request)."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # longer than the file can be: it is garbage
        part.unlink()
        start = 0
    if size is not None and start == size:
        return  # complete but not yet verified (e.g. interrupted during the check)
    resp = _open(url, start)
    if resp is None:
        if not start:
            raise DownloadError(f"{url}: HTTP 416 without a Range request. Check the URL, then re-run.")
        part.unlink(missing_ok=True)  # our part does not fit this file: start over
        return _stream(url, part, size, progress)
    with resp:
        if start and resp.status != 206:
            start = 0  # server ignored Range and sends the whole file
        length = resp.headers.get("Content-Length")
        sent = start + int(length) if length else None  # what the server promised
        total = size if size is not None else sent
        mode = "ab" if start else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=part.name[:-5], disable=not progress) as bar:
            try:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(f"download of {url} was interrupted after {f.tell():,} bytes ({e!r}). "
                                    f"Re-run to resume from {part}.") from e
    got = part.stat().st_size
    if sent is not None and got < sent:
        raise DownloadError(f"download of {url} stopped at {got:,} of {sent:,} bytes. Re-run to resume from {part}.")


def fetch_file(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
               sha256_prefix: str | None = None, size: int | None = None, sha384: str | None = None,
               progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (a file path) and verify it; return ``dest``.

    Skips the download if ``dest`` already exists and verifies. Otherwise streams to ``dest + ".part"``, resuming a
    partial file with an HTTP Range request, checks ``size`` (bytes) and every given checksum (``md5``, ``sha384``,
    ``sha256``, or ``sha256_prefix`` as in torch hub file names), then renames it onto ``dest``. On a checksum
    mismatch the ``.part`` file is deleted and ``ChecksumError`` names URL, expected and got; a file already at
    ``dest`` is never replaced by an unverified one. Network failures raise ``DownloadError`` (re-running resumes).
    Used by :func:`download_coco` and :func:`download_checkpoint`.
    """
    dest = Path(dest)
    expect = dict(md5=md5, sha256=sha256, sha256_prefix=sha256_prefix, size=size, sha384=sha384)
    if dest.exists() and _check(dest, **expect) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    if size is not None:
        check_disk_space(dest.parent, size - (part.stat().st_size if part.exists() else 0))
    _stream(url, part, size, progress)
    if (problem := _check(part, **expect)) is not None:
        part.unlink()
        raise ChecksumError(f"{url}: {problem}. The download was deleted; re-run to fetch it again "
                            f"(if this repeats, the server's file changed).")
    os.replace(part, dest)
    return dest


def _marker(root: Path, asset: Asset) -> Path:
    return root / f".{asset.name}.unpacked.json"


def _is_unpacked(root: Path, asset: Asset) -> bool:
    marker = _marker(root, asset)
    if not marker.exists():
        return False
    info = json.loads(marker.read_text())
    return (info.get("md5") == asset.md5 and info.get("sha256_prefix") == asset.sha256_prefix
            and all((root / p).exists() for p in info.get("paths", [])))


def _selected(zf: zipfile.ZipFile, members: tuple[str, ...] | None) -> list[zipfile.ZipInfo]:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if members is None:
        return infos
    chosen = [i for i in infos if any(i.filename == m or (m.endswith("/") and i.filename.startswith(m))
                                      for m in members)]
    missing = [m for m in members if not any(i.filename == m or i.filename.startswith(m) for i in chosen)]
    if missing:
        raise ValueError(f"{zf.filename} does not contain {missing}; delete it and re-run to download it again.")
    return chosen


def _move_into(src: Path, dst: Path) -> None:
    """Rename ``src`` onto ``dst``; merge folder by folder when ``dst`` already exists."""
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _move_into(child, dst / child.name)
    else:
        os.replace(src, dst)


def unpack(archive: Path, root: Path, asset: Asset) -> list[str]:
    """Unpack ``asset.members`` of ``archive`` into ``root`` via a temporary folder; return the top-level paths."""
    with zipfile.ZipFile(archive) as zf:
        infos = _selected(zf, asset.members)
        check_disk_space(root, sum(i.file_size for i in infos))
        tmp = Path(tempfile.mkdtemp(prefix=f".unpack-{asset.name}-", dir=root))
        try:
            for info in infos:
                zf.extract(info, tmp)
            tops = sorted({Path(i.filename).parts[0] for i in infos})
            for top in tops:
                _move_into(tmp / top, root / top)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [str(Path(i.filename)) for i in infos] if asset.members else tops


def download_coco(root: Path | str, progress: bool = True, *, assets: tuple[Asset, ...] | None = None,
                  keep_archives: bool = False) -> Path:
    """Fetch and unpack COCO val2017 into ``root``: ``root/val2017/*.jpg``, ``root/annotations/instances_val2017.json``.

    ``assets`` defaults to ``COCO_ASSETS`` (tests pass their own). Each archive is checksummed before unpacking; what
    is already unpacked and recorded in a marker file (``root/.<zip name>.unpacked.json``, holding the zip's md5) is
    skipped without any network request. Archives are deleted after unpacking unless ``keep_archives``. Needs ~1.7 GB
    free at the peak (zip + its unpacked copy), ~0.8 GB after. Used by ``notebooks/01_data_split.ipynb`` (real
    profile). Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for asset in COCO_ASSETS if assets is None else assets:
        if _is_unpacked(root, asset):
            continue
        archive = fetch_file(asset.url, root / asset.name, md5=asset.md5, sha256_prefix=asset.sha256_prefix,
                             size=asset.size, progress=progress)
        paths = unpack(archive, root, asset)
        _marker(root, asset).write_text(json.dumps(
            {"url": asset.url, "md5": asset.md5, "sha256_prefix": asset.sha256_prefix, "paths": paths}, indent=1))
        if not keep_archives:
            archive.unlink()
    return root


def download_checkpoint(dest_dir: Path | str = "data/checkpoints", progress: bool = True,
                        asset: Asset = CHECKPOINT) -> Path:
    """Fetch the official checkpoint into ``dest_dir``: resumable, written under a temporary name and renamed only
    once its size, SHA-384 and SHA-256 prefix check out (the published record, :data:`CHECKPOINT`); an existing
    verified file is kept as is, one that fails is downloaded again. Returns its path."""
    return fetch_file(asset.url, Path(dest_dir) / asset.name, md5=asset.md5, sha256_prefix=asset.sha256_prefix,
                      sha384=asset.sha384, size=asset.size, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m detr_nb_utils.data.download {coco --root DIR | checkpoint --dest DIR} [--quiet]``."""
    parser = argparse.ArgumentParser(prog="python -m detr_nb_utils.data.download", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    coco = sub.add_parser("coco", help="COCO val2017 images and instances annotations")
    coco.add_argument("--root", type=Path, default=Path("data/coco"))
    coco.add_argument("--keep-archives", action="store_true", help="keep the zips after unpacking")
    ckpt = sub.add_parser("checkpoint", help="the official COCO-pretrained DETR-R50 weights")
    ckpt.add_argument("--dest", type=Path, default=Path("data/checkpoints"))
    for p in (coco, ckpt):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.what == "coco":
            print(download_coco(args.root, progress=not args.quiet, keep_archives=args.keep_archives))
        else:
            print(download_checkpoint(args.dest, progress=not args.quiet))
    except (DownloadError, ChecksumError, OSError) as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
