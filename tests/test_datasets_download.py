"""The download helper: arranging fabricated archives into the CoOp layout, and failing fast offline.

No test touches the network: archives are fabricated with tarfile/zipfile in the layout the real
archives have and served through a local fetcher (``file://`` URLs through the real ``fetch_url``).
The Hub source is switched to offline mode here (``HF_HUB_OFFLINE``), so where a dataset's default
order of sources includes the Hub, it fails at once and the next source is used; the Hub path itself
is tested against a local fake Hub in test_datasets_hub.py.
"""
import io
import os
import os.path as osp
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import zipfile

import pytest

from dataset_fixtures import MINIS, build_dataset

from vlprompt.data import catalog, download
from vlprompt.data.download import DownloadError, fetch_url


# ------------------------------------------------------------------------------------------------
# fabricated archives
# ------------------------------------------------------------------------------------------------
def _tar(path, members, mode="w:gz"):
    """members: [(source path, name in the archive)] (folders are added recursively)."""
    with tarfile.open(path, mode) as tf:
        for src, arcname in members:
            tf.add(src, arcname=arcname)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for src, arcname in members:
            if osp.isdir(src):
                for dirpath, _, filenames in os.walk(src):
                    for fn in sorted(filenames):
                        full = osp.join(dirpath, fn)
                        zf.write(full, osp.join(arcname, osp.relpath(full, src)))
            else:
                zf.write(src, arcname)


def _pack(name, src, served):
    """Write the archives of dataset ``name`` (built under ``src``) into ``served``, as published."""
    info = catalog.DATASETS[name]
    d = info.dataset_path(src)
    j = lambda *p: osp.join(served, *p)  # noqa: E731
    if name == "OxfordPets":
        _tar(j("images.tar.gz"), [(osp.join(d, "images"), "images")])
        _tar(j("annotations.tar.gz"), [(osp.join(d, "annotations"), "annotations")])
    elif name == "OxfordFlowers":
        _tar(j("102flowers.tgz"), [(osp.join(d, "jpg"), "jpg")])
        shutil.copy(osp.join(d, "imagelabels.mat"), j("imagelabels.mat"))
    elif name == "FGVCAircraft":
        _tar(j("fgvc-aircraft-2013b.tar.gz"), [(d, "fgvc-aircraft-2013b/data")])
    elif name == "DescribableTextures":
        _tar(j("dtd-r1.0.1.tar.gz"), [(d, "dtd")])
    elif name == "EuroSAT":
        _zip(j("EuroSAT.zip"), [(osp.join(d, "2750"), "2750")])
    elif name == "Food101":
        _tar(j("food-101.tar.gz"), [(d, "food-101")])
    elif name == "SUN397":
        _tar(j("SUN397.tar.gz"), [(osp.join(d, "SUN397"), "SUN397")])
        _zip(j("Partitions.zip"), [(osp.join(d, f), f) for f in
                                   ("ClassName.txt", "Training_01.txt", "Testing_01.txt", "Training_02.txt")])
    elif name == "Caltech101":
        inner = j("101_ObjectCategories.tar.gz")
        _tar(inner, [(osp.join(d, "101_ObjectCategories"), "101_ObjectCategories")])
        annotations = j("Annotations.tar")
        _tar(annotations, [(inner, "Annotations/dummy")], mode="w")
        _zip(j("caltech-101.zip"), [(inner, "caltech-101/101_ObjectCategories.tar.gz"),
                                    (annotations, "caltech-101/Annotations.tar")])
    elif name == "UCF101":
        _zip(j("UCF-101-midframes.zip"), [(osp.join(d, "UCF-101-midframes"), "UCF-101-midframes")])
    elif name == "ImageNetV2":
        _tar(j("imagenetv2-matched-frequency.tar.gz"), [(osp.join(d, info.image_dir), info.image_dir)])
    elif name in ("ImageNetA", "ImageNetR"):
        _tar(j(info.archives[0].filename), [(osp.join(d, info.image_dir), info.image_dir)], mode="w")
    elif name == "ImageNetSketch":
        _zip(j("ImageNet-Sketch.zip"), [(osp.join(d, "images"), "sketch")])
    else:
        raise AssertionError(name)


class LocalServer:
    """A fetcher serving files from a folder through the real ``fetch_url`` (``file://`` URLs).

    Google Drive URLs are served from ``drive[<file id>]``; everything else by file name.
    """

    def __init__(self, folder):
        self.folder = folder
        self.drive = {}
        self.requests = []

    def __call__(self, url, dest, md5=None, timeout=None):
        self.requests.append(url)
        parsed = urllib.parse.urlparse(url)
        if "drive" in parsed.netloc:
            file_id = urllib.parse.parse_qs(parsed.query)["id"][0]
            if file_id not in self.drive:
                raise DownloadError(f"no such Drive file {file_id}")
            local = self.drive[file_id]
        else:
            local = osp.join(self.folder, osp.basename(parsed.path))
            if not osp.exists(local):
                raise DownloadError(f"HTTP 404 for {url}")
        return fetch_url("file://" + local, dest, md5=None, timeout=5, quiet=True)


def _serve(name, tmp_path):
    """Fabricate dataset ``name``: raw tree under src/, archives under served/, split JSON on 'Drive'."""
    src, served = str(tmp_path / "src"), str(tmp_path / "served")
    os.makedirs(served)
    mini = MINIS[name](src)
    _pack(name, src, served)
    server = LocalServer(served)
    info = catalog.DATASETS[name]
    build_dataset(src, name)  # writes the split JSON we "publish" on Google Drive
    if info.split_gdrive_id:
        server.drive[info.split_gdrive_id] = info.split_path(src)
    for archive in info.archives:  # archives published on Google Drive (UCF101's middle frames)
        for url in archive.urls:
            parsed = urllib.parse.urlparse(url)
            if "drive" in parsed.netloc:
                server.drive[urllib.parse.parse_qs(parsed.query)["id"][0]] = osp.join(served, archive.filename)
    for file_id, fname in info.extra_files:
        server.drive[file_id] = osp.join(info.dataset_path(src), fname)
    return mini, server


DOWNLOADABLE = [n for n, info in catalog.DATASETS.items() if info.archives]


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_which_datasets_are_downloadable():
    assert sorted(DOWNLOADABLE) == sorted(set(catalog.DATASETS) - {"ImageNet", "StanfordCars"})
    assert sorted(download.ARRANGERS) == sorted(DOWNLOADABLE)


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_download_arranges_the_coop_layout(tmp_path, name):
    mini, server = _serve(name, tmp_path)
    dst = str(tmp_path / "data")
    info = catalog.DATASETS[name]
    assert download.main([info.yaml, "--root", dst], fetcher=server) == download.EXIT_OK
    # the arranged tree loads with the expected classes and sizes
    ds = build_dataset(dst, name)
    assert ds.classnames == mini.classnames
    assert len(ds.test) == mini.sizes[2] and len(ds.train_x) == mini.sizes[0]
    if info.split_file:
        assert osp.isfile(info.split_path(dst))
    # staging and archives are cleaned up
    assert sorted(os.listdir(dst)) == [info.dataset_dir]
    # the install manifest names the archives, and the folder verifies against it
    from vlprompt.data import doctor
    from vlprompt.data.integrity import read_manifest

    record = read_manifest(info.dataset_path(dst))
    assert [a["filename"] for a in record["source"]["archives"]] == [a.filename for a in info.archives]
    if info.split_file:  # fetched after the archives, recorded too
        assert info.split_file in record["files"]
    v = doctor.check_dataset(info, dst, verify=True, quick=True)
    assert any("--verify: all" in d for d in v.details), v.details
    # a second run finds everything in place and fetches nothing
    server.requests.clear()
    assert download.main([info.yaml, "--root", dst], fetcher=server) == download.EXIT_OK
    assert server.requests == []


def test_keep_archives_and_reuse_them(tmp_path):
    _, server = _serve("FGVCAircraft", tmp_path)  # its archive has no published MD5
    dst = str(tmp_path / "data")
    assert download.main(["fgvc_aircraft", "--root", dst, "--keep-archives"], fetcher=server) == 0
    kept = osp.join(dst, download.DOWNLOADS_DIR, "fgvc-aircraft-2013b.tar.gz")
    assert osp.isfile(kept)
    shutil.rmtree(osp.join(dst, "fgvc_aircraft"))
    server.requests.clear()
    assert download.main(["fgvc_aircraft", "--root", dst], fetcher=server) == 0
    assert server.requests == []  # the archive on disk was reused ...
    assert not osp.exists(kept)  # ... and removed afterwards
    assert build_dataset(dst, "FGVCAircraft").num_classes == 4


def test_cached_archive_with_wrong_md5_is_fetched_again(tmp_path):
    _, server = _serve("DescribableTextures", tmp_path)
    dst = str(tmp_path / "data")
    os.makedirs(osp.join(dst, download.DOWNLOADS_DIR))
    with open(osp.join(dst, download.DOWNLOADS_DIR, "dtd-r1.0.1.tar.gz"), "w") as f:
        f.write("truncated")
    assert download.main(["dtd", "--root", dst], fetcher=server) == 0
    assert any(r.endswith("dtd-r1.0.1.tar.gz") for r in server.requests)


def test_split_only(tmp_path):
    _, server = _serve("OxfordPets", tmp_path)
    dst = str(tmp_path / "data")
    assert download.main(["OxfordPets", "--root", dst, "--split-only"], fetcher=server) == 0
    assert os.listdir(osp.join(dst, "oxford_pets")) == ["split_zhou_OxfordPets.json"]
    assert all("drive" in r for r in server.requests)


def test_manual_datasets_print_steps(tmp_path, capsys):
    dst = str(tmp_path / "data")
    assert download.main(["imagenet", "--root", dst]) == download.EXIT_MANUAL
    out = capsys.readouterr().out
    assert "image-net.org" in out and osp.join(dst, "imagenet", "images", "train") in out
    def offline(url, dest, md5=None, timeout=None):
        raise DownloadError("cannot reach drive.usercontent.google.com: offline")

    # manual steps for the images; the split file fetch fails (offline) and says where to get it
    assert download.main(["stanford_cars", "--root", dst], fetcher=offline) == download.EXIT_FAILED
    captured = capsys.readouterr()
    assert "cars_test_annos_withlabels.mat" in captured.out and "--split-only" in captured.out
    assert "drive.google.com/file/d/1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT" in captured.err


def test_stanford_cars_split_only_and_present_data(tmp_path):
    _, server = _serve_cars(tmp_path)
    dst = str(tmp_path / "src")
    os.remove(catalog.DATASETS["StanfordCars"].split_path(dst))
    # the user arranged the images by hand: no manual steps, only the split file is fetched
    assert download.main(["stanford_cars", "--root", dst], fetcher=server) == 0
    assert osp.isfile(catalog.DATASETS["StanfordCars"].split_path(dst))


def _serve_cars(tmp_path):
    src = str(tmp_path / "src")
    mini = MINIS["StanfordCars"](src)
    build_dataset(src, "StanfordCars")
    spare = str(tmp_path / "split.json")
    shutil.copy(catalog.DATASETS["StanfordCars"].split_path(src), spare)
    os.makedirs(tmp_path / "served")
    server = LocalServer(str(tmp_path / "served"))
    server.drive[catalog.DATASETS["StanfordCars"].split_gdrive_id] = spare
    return mini, server


def test_incomplete_existing_folder_is_not_overwritten(tmp_path):
    _, server = _serve("OxfordPets", tmp_path)
    dst = str(tmp_path / "data")
    os.makedirs(osp.join(dst, "oxford_pets", "images"))
    with open(osp.join(dst, "oxford_pets", "images", "mine.jpg"), "w") as f:
        f.write("x")
    assert download.main(["oxford_pets", "--root", dst], fetcher=server) == download.EXIT_FAILED
    assert os.listdir(osp.join(dst, "oxford_pets", "images")) == ["mine.jpg"]
    assert server.requests == []  # refused before downloading anything


def test_broken_archive_leaves_nothing_half_arranged(tmp_path):
    _, server = _serve("OxfordPets", tmp_path)
    # annotations archive without trainval.txt: arranging fails after images/ was found
    bad = osp.join(server.folder, "annotations.tar.gz")
    empty = tmp_path / "empty"
    os.makedirs(empty)
    _tar(bad, [(str(empty), "annotations")])
    dst = str(tmp_path / "data")
    assert download.main(["oxford_pets", "--root", dst], fetcher=server) == download.EXIT_FAILED
    assert not osp.exists(osp.join(dst, "oxford_pets", "images"))
    assert not [p for p in os.listdir(dst) if p.startswith(".vlprompt_staging")]


def test_google_drive_web_page_instead_of_json(tmp_path, capsys):
    _, server = _serve("EuroSAT", tmp_path)
    page = tmp_path / "quota.html"
    page.write_text("<html><body>Google Drive - Quota exceeded</body></html>")
    server.drive[catalog.DATASETS["EuroSAT"].split_gdrive_id] = str(page)
    dst = str(tmp_path / "data")
    assert download.main(["eurosat", "--root", dst], fetcher=server) == download.EXIT_FAILED
    err = capsys.readouterr().err
    assert "drive.google.com/file/d/" in err
    assert not os.path.exists(catalog.DATASETS["EuroSAT"].split_path(dst))
    assert not [f for f in os.listdir(osp.join(dst, "eurosat")) if "split_zhou" in f]


def test_unsafe_archive_member_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        data = b"owned"
        ti = tarfile.TarInfo("../outside.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(DownloadError):
        download.extract_archive(str(evil), str(tmp_path / "out"))
    assert not (tmp_path / "outside.txt").exists()
    zevil = tmp_path / "evil.zip"
    with zipfile.ZipFile(zevil, "w") as zf:
        zf.writestr("../outside2.txt", "owned")
    with pytest.raises(DownloadError):
        download.extract_archive(str(zevil), str(tmp_path / "out"))
    not_an_archive = tmp_path / "page.tar.gz"
    not_an_archive.write_text("<html></html>")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        download.extract_archive(str(not_an_archive), str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------------
# the real fetch path
# ------------------------------------------------------------------------------------------------
def test_md5_mismatch_leaves_no_file(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    dest = str(tmp_path / "out" / "a.bin")
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        fetch_url("file://" + str(src), dest, md5="0" * 32, quiet=True)
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")
    fetch_url("file://" + str(src), dest, md5="900150983cd24fb0d6963f7d28e17f72", quiet=True)
    assert open(dest, "rb").read() == b"abc"


def test_offline_fails_fast_and_clearly(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    dst = str(tmp_path / "data")
    start = time.time()
    assert download.main(["dtd", "--root", dst]) == download.EXIT_FAILED
    assert time.time() - start < 5
    err = capsys.readouterr().err
    assert "cannot reach www.robots.ox.ac.uk" in err and "offline" in err
    assert "drive.google.com/file/d/1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x" in err  # the manual split link
    assert not os.path.exists(osp.join(dst, "dtd"))
    assert not os.path.exists(osp.join(dst, download.DOWNLOADS_DIR))


def test_unreachable_host_through_real_urllib(tmp_path):
    start = time.time()
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch_url("http://127.0.0.1:9/none.tar", str(tmp_path / "none.tar"), timeout=3, quiet=True)
    assert time.time() - start < 10
    assert not os.path.exists(tmp_path / "none.tar.part")


def test_web_page_instead_of_a_file(tmp_path, monkeypatch):
    class Page(io.BytesIO):
        headers = {"Content-Type": "text/html; charset=utf-8", "Content-Length": "13"}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Page(b"<html></html>"))
    with pytest.raises(DownloadError, match="web page"):
        fetch_url("https://example.org/archive.tar.gz", str(tmp_path / "archive.tar.gz"), quiet=True)
    assert not os.listdir(tmp_path)


def test_list_and_unknown_name(tmp_path, capsys):
    assert download.main(["--list"]) == 0
    out = capsys.readouterr().out
    for info in catalog.DATASETS.values():
        assert info.name in out
    assert download.main(["cifar10", "--root", str(tmp_path)]) == 2


def test_source_original_keeps_the_manual_steps_for_stanford_cars(tmp_path, capsys):
    _, server = _serve_cars(tmp_path)
    dst = str(tmp_path / "data")
    assert download.main(["stanford_cars", "--root", dst, "--source", "original"], fetcher=server) == \
        download.EXIT_MANUAL
    out = capsys.readouterr().out
    assert "cars_test_annos_withlabels.mat" in out
    assert osp.isfile(catalog.DATASETS["StanfordCars"].split_path(dst))  # the split file is still fetched


def test_source_hub_for_a_dataset_no_mirror_holds(tmp_path, capsys):
    assert download.main(["imagenetv2", "--root", str(tmp_path), "--source", "hub"]) == download.EXIT_FAILED
    assert "no Hub mirror to fetch it from" in capsys.readouterr().err


def test_default_order_falls_back_to_the_next_source(tmp_path, capsys):
    _, server = _serve("UCF101", tmp_path)  # UCF101: hub first (offline here), then CoOp's Drive copy
    dst = str(tmp_path / "data")
    assert download.main(["ucf101", "--root", dst], fetcher=server) == download.EXIT_OK
    out = capsys.readouterr().out
    assert "fetching from hub failed; trying the next source" in out
    assert "HF_HUB_OFFLINE" in out


def test_interrupted_original_download_resumes(tmp_path):
    import hashlib
    import http.server
    import threading

    payload = os.urandom(300_000)
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        cut = [100_000]

        def log_message(self, *a):
            pass

        def do_GET(self):
            rng = self.headers.get("Range")
            start = int(rng.split("=")[1].rstrip("-")) if rng else 0
            body = payload[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Length", str(len(body)))
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            self.end_headers()
            n = self.cut.pop() if self.cut else len(body)
            seen.append((rng, n))  # before the write: the client may finish reading before this thread goes on
            self.wfile.write(body[:n])
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/archive.tar.gz"
        dest = str(tmp_path / "archive.tar.gz")
        md5 = hashlib.md5(payload).hexdigest()
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            fetch_url(url, dest, md5=md5, timeout=5, quiet=True)
        assert os.path.getsize(dest + ".part") == 100_000 and not os.path.exists(dest)
        fetch_url(url, dest, md5=md5, timeout=5, quiet=True)
        assert open(dest, "rb").read() == payload
        assert seen == [(None, 100_000), ("bytes=100000-", 200_000)]  # only the rest was sent again
    finally:
        server.shutdown()
        server.server_close()
