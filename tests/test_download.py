"""download.py against a local HTTP server on 127.0.0.1: good, interrupted/resumed, wrong checksum, gone, no disk."""

from __future__ import annotations

import hashlib
import shutil
import socket
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from detr_nb_utils.data import download as download
from detr_nb_utils.data.download import Asset, ChecksumError, DownloadError, download_coco, fetch_file


@pytest.fixture(autouse=True)
def _localhost_only(monkeypatch):
    """Fail loudly if anything in these tests tries to reach beyond 127.0.0.1."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def payload(n: int = 300_000) -> bytes:
    return bytes((i * 7919 + i // 251) % 256 for i in range(n))


def make_zip(path: Path, files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path.read_bytes()


def test_fetch_file_downloads_verifies_and_skips_existing(local_http_server, tmp_path):
    data = payload()
    (local_http_server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "out" / "f.bin"
    url = local_http_server.url("f.bin")
    assert fetch_file(url, dest, md5=md5(data), size=len(data), progress=False) == dest
    assert dest.read_bytes() == data and not dest.with_suffix(".bin.part").exists()
    n = len(local_http_server.requests)
    fetch_file(url, dest, md5=md5(data), size=len(data), progress=False)
    assert len(local_http_server.requests) == n  # verified file: no request


def test_sha256_prefix_is_checked(local_http_server, tmp_path):
    data = payload(1000)
    (local_http_server.root / "w.pth").write_bytes(data)
    good = hashlib.sha256(data).hexdigest()[:8]
    fetch_file(local_http_server.url("w.pth"), tmp_path / "w.pth", sha256_prefix=good, progress=False)
    with pytest.raises(ChecksumError, match="sha256"):
        fetch_file(local_http_server.url("w.pth"), tmp_path / "v.pth", sha256_prefix="00000000", progress=False)
    assert not (tmp_path / "v.pth").exists()


def test_interrupted_download_resumes_with_range(local_http_server, tmp_path):
    data = payload()
    (local_http_server.root / "f.bin").write_bytes(data)
    dest, url = tmp_path / "f.bin", local_http_server.url("f.bin")
    local_http_server.cut_after = len(data) // 2
    with pytest.raises(DownloadError, match="(?i)re-run to resume") as err:
        fetch_file(url, dest, md5=md5(data), size=len(data), progress=False)
    assert url in str(err.value)
    part = dest.with_suffix(".bin.part")
    assert part.stat().st_size == len(data) // 2 and not dest.exists()

    local_http_server.cut_after = None
    fetch_file(url, dest, md5=md5(data), size=len(data), progress=False)
    assert local_http_server.requests[-1] == ("/f.bin", f"bytes={len(data) // 2}-")
    assert dest.read_bytes() == data and not part.exists()


def test_server_ignoring_range_restarts_from_zero(local_http_server, tmp_path):
    data = payload()
    (local_http_server.root / "f.bin").write_bytes(data)
    dest = tmp_path / "f.bin"
    dest.with_suffix(".bin.part").write_bytes(data[:1000])
    local_http_server.ignore_range = True
    fetch_file(local_http_server.url("f.bin"), dest, md5=md5(data), size=len(data), progress=False)
    assert local_http_server.requests[-1][1] == "bytes=1000-"  # asked to resume, got the whole file
    assert dest.read_bytes() == data


def test_wrong_checksum_leaves_nothing_and_keeps_good_file(local_http_server, tmp_path):
    data = payload()
    (local_http_server.root / "f.bin").write_bytes(data)
    url = local_http_server.url("f.bin")
    wrong = "0" * 32
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(ChecksumError) as err:
        fetch_file(url, fresh, md5=wrong, progress=False)
    assert url in str(err.value) and wrong in str(err.value) and md5(data) in str(err.value)
    assert list(tmp_path.glob("fresh*")) == []

    good = tmp_path / "good.bin"
    good.write_bytes(b"an older, good file")
    with pytest.raises(ChecksumError):
        fetch_file(url, good, md5=wrong, progress=False)
    assert good.read_bytes() == b"an older, good file"
    assert list(tmp_path.glob("good*")) == [good]


def test_file_shorter_than_expected_on_server_is_a_checksum_error(local_http_server, tmp_path):
    data = payload()
    (local_http_server.root / "f.bin").write_bytes(data[:-10])
    with pytest.raises(ChecksumError, match=f"expected {len(data)} bytes"):
        fetch_file(local_http_server.url("f.bin"), tmp_path / "f.bin", size=len(data), progress=False)
    assert list(tmp_path.glob("f.bin*")) == []


def test_server_gone_is_a_clear_error(local_http_server, tmp_path):
    url = local_http_server.url("f.bin")
    local_http_server.stop()
    with pytest.raises(DownloadError, match="(?i)could not reach .* re-run") as err:
        fetch_file(url, tmp_path / "f.bin", size=10, progress=False)
    assert url in str(err.value)


def test_not_enough_disk_space_fails_before_any_request(local_http_server, tmp_path, monkeypatch):
    (local_http_server.root / "f.bin").write_bytes(payload(5000))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match="not enough disk space") as err:
        fetch_file(local_http_server.url("f.bin"), tmp_path / "f.bin", size=5000, progress=False)
    assert str(tmp_path) in str(err.value) and "5,000 bytes needed" in str(err.value)
    assert local_http_server.requests == []


@pytest.fixture
def coco_zips(local_http_server):
    """Two small zips shaped like COCO's, served locally, and their Assets."""
    images = {f"val2017/{i:012d}.jpg": payload(2000 + i) for i in (1, 2, 3)}
    served = local_http_server.root
    val = make_zip(served / "val2017.zip", images)
    ann = make_zip(served / "ann.zip", {"annotations/instances_val2017.json": b'{"images": []}',
                                        "annotations/instances_train2017.json": b"not wanted"})
    assets = (Asset("val2017.zip", local_http_server.url("val2017.zip"), len(val), md5=md5(val)),
              Asset("ann.zip", local_http_server.url("ann.zip"), len(ann), md5=md5(ann),
                    members=("annotations/instances_val2017.json",)))
    return assets, images


def test_download_coco_unpacks_then_skips_without_requests(coco_zips, local_http_server, tmp_path):
    assets, images = coco_zips
    root = tmp_path / "coco"
    download_coco(root, progress=False, assets=assets)
    for name, data in images.items():
        assert (root / name).read_bytes() == data
    assert (root / "annotations/instances_val2017.json").read_bytes() == b'{"images": []}'
    assert not (root / "annotations/instances_train2017.json").exists()  # only the listed member
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".unpacked.json")) == [
        "annotations", "val2017"]  # no zip, no temporary folder left
    n = len(local_http_server.requests)
    download_coco(root, progress=False, assets=assets)
    assert len(local_http_server.requests) == n


def test_download_coco_checks_checksum_before_unpacking(coco_zips, tmp_path):
    assets, _ = coco_zips
    bad = (Asset(assets[0].name, assets[0].url, assets[0].size, md5="f" * 32),)
    root = tmp_path / "coco"
    with pytest.raises(ChecksumError):
        download_coco(root, progress=False, assets=bad)
    assert list(root.iterdir()) == []


def test_download_coco_reunpacks_when_folder_was_deleted(coco_zips, local_http_server, tmp_path):
    assets, images = coco_zips
    root = tmp_path / "coco"
    download_coco(root, progress=False, assets=assets)
    shutil.rmtree(root / "val2017")
    download_coco(root, progress=False, assets=assets)
    assert all((root / name).is_file() for name in images)


def test_cli_fetches_coco_and_the_checkpoint_asset(coco_zips, monkeypatch, tmp_path):
    assets, images = coco_zips
    monkeypatch.setattr(download, "COCO_ASSETS", assets)
    download.main(["coco", "--root", str(tmp_path / "c"), "--quiet"])
    assert all((tmp_path / "c" / name).is_file() for name in images)

    calls = []
    monkeypatch.setattr(download, "fetch_file", lambda url, dest, **kw: calls.append((url, dest, kw)) or dest)
    download.main(["checkpoint", "--dest", str(tmp_path / "ck"), "--quiet"])
    (url, dest, kw), = calls
    assert url == "https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth"
    assert dest == tmp_path / "ck" / "detr-r50-e632da11.pth"
    assert kw["sha256_prefix"] == "e632da11" and kw["progress"] is False
    assert kw["size"] == 166_618_694 and kw["sha384"].startswith("cba2c4acb7c6ec60")  # Open Model Zoo's record


def test_the_checkpoint_download_checks_size_and_sha384_and_refetches_a_bad_copy(local_http_server, tmp_path):
    """The official file's whole record is checked at download, on a small stand-in served locally: a copy on disk
    that fails (one byte changed, same size) is fetched again, a server file that fails is refused."""
    data = payload(5000)
    (local_http_server.root / "w.pth").write_bytes(data)
    asset = Asset("w.pth", local_http_server.url("w.pth"), len(data),
                  sha256_prefix=hashlib.sha256(data).hexdigest()[:8], sha384=hashlib.sha384(data).hexdigest())
    dest = download.download_checkpoint(tmp_path, progress=False, asset=asset)
    assert dest.read_bytes() == data
    bad = bytearray(data)
    bad[100] ^= 1
    dest.write_bytes(bytes(bad))  # damaged on disk after the download, size unchanged
    n = len(local_http_server.requests)
    assert download.download_checkpoint(tmp_path, progress=False, asset=asset).read_bytes() == data
    assert len(local_http_server.requests) > n
    (local_http_server.root / "w.pth").write_bytes(bytes(bad))  # the server's copy changed
    dest.unlink()
    with pytest.raises(ChecksumError, match="expected sha384"):
        download.download_checkpoint(tmp_path, progress=False, asset=asset)
    assert not dest.exists()
