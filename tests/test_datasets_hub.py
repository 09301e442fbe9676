"""Fetching datasets from Hub mirrors, against a fabricated Hub served on 127.0.0.1.

``FakeHub`` implements the few Hub endpoints the download path uses: ``HEAD``/``GET``
``/<repo>/resolve/<revision>/<file>`` answered, as the Hub does for LFS files, with a redirect to a
CDN URL and the ``X-Repo-Commit`` / ``X-Linked-Etag`` / ``X-Linked-Size`` headers; the CDN URL with
HTTP ranges; and ``/api/models/<repo>/tree/<revision>``. It can cut a
transfer short (an interruption) or serve corrupted bytes. The repository has the real mirror's
layout: the archive names of ``hub_mirrors.json``, each a zip of the dataset's CoOp folder with its
split file and Dassl's ``split_fewshot/*.pkl`` caches. Because fabricated archives cannot have the
real checksums, the records' recorded sizes/sha256 are replaced by the fabricated files' values
(records without a sha256 stay without one, so both verification paths run). No test touches the
network: the endpoint is the local server, and Google Drive fetches go to a fetcher that fails.
"""
import dataclasses
import hashlib
import http.server
import json
import os
import os.path as osp
import pickle
import shutil
import threading
import urllib.parse
import zipfile

import pytest

from dataset_fixtures import MINIS, build_dataset

from vlprompt.data import catalog, doctor, download, hub as hubmod
from vlprompt.data.hub import HubClient
from vlprompt.data.integrity import MANIFEST_NAME

REPO = "zhengli97/prompt_learning_dataset"
COMMIT = "c" * 40


class FakeHub:
    """A Hub serving files from memory. ``files[(repo_id, filename)] = bytes``."""

    def __init__(self):
        self.files = {}
        self.log = []  # (method, path, range header, bytes sent)
        self.cut = {}  # filename -> send only this many bytes on the next GET, then drop the connection
        self.corrupt = set()  # filenames served with one byte flipped (headers still announce the truth)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _file(self):
                path = urllib.parse.urlparse(self.path).path
                if path.startswith("/cdn/"):  # where /resolve/ redirects to, as the Hub does for LFS files
                    repo, name = path[len("/cdn/"):].split("/-/", 1)
                    return urllib.parse.unquote(repo), COMMIT, urllib.parse.unquote(name)
                if path.startswith("/datasets/"):
                    path = path[len("/datasets"):]
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, None, None
                repo, rev, name = "/".join(parts[:2]), parts[3], urllib.parse.unquote("/".join(parts[4:]))
                return repo, rev, name

            def _headers(self, data, status=200, extra=None):
                self.send_response(status)
                sha = hashlib.sha256(data).hexdigest()
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)

            def do_HEAD(self):
                if self.path.startswith("/api/"):
                    return self._api(head=True)
                repo, rev, name = self._file()
                data = hub.files.get((repo, name))
                hub.log.append(("HEAD", name, None, 0))
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self.path.startswith("/cdn/"):
                    # the real Hub answers an LFS file's /resolve/ with a redirect to its CDN; the
                    # X-Linked-* headers carry the file's size and sha256
                    self._headers(data, 302, {"Location": hub.cdn_url(repo, name), "Content-Length": "0"})
                    self.end_headers()
                    return
                self._headers(data, extra={"Content-Length": str(len(data))})
                self.end_headers()

            def do_GET(self):
                if self.path.startswith("/api/"):
                    return self._api()
                repo, rev, name = self._file()
                data = hub.files.get((repo, name))
                rng = self.headers.get("Range")
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    hub.log.append(("GET", name, rng, 0))
                    return
                if not self.path.startswith("/cdn/"):
                    self._headers(data, 302, {"Location": hub.cdn_url(repo, name), "Content-Length": "0"})
                    self.end_headers()
                    hub.log.append(("GET", name, rng, 0))
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                if name in hub.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                extra = {"Content-Length": str(len(body))}
                if rng:
                    extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self._headers(data, 206 if rng else 200, extra)
                self.end_headers()
                n = hub.cut.pop(name, None)
                sent = body if n is None else body[:n]
                hub.log.append(("GET", name, rng, len(sent)))  # before the write (the client may be done first)
                self.wfile.write(sent)
                if n is not None:
                    self.wfile.flush()
                    self.close_connection = True

            def _api(self, head=False):
                # /api/models/<owner>/<name>/tree/<revision>
                parts = urllib.parse.urlparse(self.path).path.strip("/").split("/")
                repo = "/".join(parts[2:4])
                entries = [{"type": "file", "path": fn, "size": len(d), "oid": hashlib.sha1(d).hexdigest(),
                            "lfs": {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 134}}
                           for (r, fn), d in sorted(hub.files.items()) if r == repo]
                body = json.dumps(entries).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def cdn_url(self, repo, name):
        return f"{self.endpoint}/cdn/{urllib.parse.quote(repo, safe='')}/-/{urllib.parse.quote(name)}"

    def gets(self, name):
        return [e for e in self.log if e[0] == "GET" and e[1] == name]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


def no_drive(url, dest, md5=None, timeout=None):
    raise download.DownloadError(f"this test must not fetch {url}")


# ------------------------------------------------------------------------------------------------
# fabricated mirror archives
# ------------------------------------------------------------------------------------------------
HUB_DATASETS = sorted({f.dataset for f in download.hub_catalog().files if f.mirror.unverified is None})


def _zip_dir(path, folder, arc_top):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, _, filenames in os.walk(folder):
            for fn in sorted(filenames):
                full = osp.join(dirpath, fn)
                zf.write(full, osp.join(arc_top, osp.relpath(full, folder)) if arc_top else osp.relpath(full, folder))


def fabricate(name, tmp_path, arc_top=True, nest_cars=False):
    """The mirror's archive for dataset ``name``: (record, archive bytes, Mini)."""
    (record,) = download.hub_catalog().files_for(name)
    src = str(tmp_path / f"src_{name}")
    mini = MINIS[name](src)
    build_dataset(src, name)  # writes the split file the mirror ships
    info = catalog.DATASETS[name]
    ddir = info.dataset_path(src)
    os.makedirs(osp.join(ddir, "split_fewshot"), exist_ok=True)
    with open(osp.join(ddir, "split_fewshot", "shot_1-seed_1.pkl"), "wb") as f:
        pickle.dump({"train": [], "val": []}, f)  # what Dassl leaves there; must never be unpickled
    if nest_cars:
        for sub in ("cars_train", "cars_test"):
            inner = osp.join(ddir, sub, sub)
            tmp = osp.join(ddir, sub + "_tmp")
            os.rename(osp.join(ddir, sub), tmp)
            os.makedirs(osp.dirname(inner), exist_ok=True)
            os.rename(tmp, inner)
    archive = str(tmp_path / record.filename)
    _zip_dir(archive, ddir, info.dataset_dir if arc_top else "")
    with open(archive, "rb") as f:
        data = f.read()
    return record, data, mini


def use_records(monkeypatch, fabricated):
    """Point the catalog's records at the fabricated archives' sizes/checksums (see module doc)."""
    cat = download.hub_catalog()
    files = []
    for rec in cat.files:
        if rec.filename in fabricated:
            data, members = fabricated[rec.filename]
            kw = {}
            if rec.sha256 is not None:
                kw = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            if rec.members:
                kw["members"] = {rel: dict(m, sha256=members[rel]) for rel, m in rec.members.items()}
            rec = dataclasses.replace(rec, **kw)
        files.append(rec)
    monkeypatch.setattr(download, "_CATALOG", dataclasses.replace(cat, files=files))


def serve(fake_hub, monkeypatch, tmp_path, names, **kw):
    fabricated, minis = {}, {}
    for name in names:
        record, data, mini = fabricate(name, tmp_path, **kw)
        fake_hub.files[(REPO, record.filename)] = data
        members = {}
        for rel in record.members:
            members[rel] = hashlib.sha256(open(osp.join(mini.dataset_dir, rel), "rb").read()).hexdigest()
        fabricated[record.filename] = (data, members)
        minis[name] = mini
    use_records(monkeypatch, fabricated)
    return minis


def run(fake_hub, argv):
    return download.main(argv + ["--endpoint", fake_hub.endpoint], fetcher=no_drive,
                         hub=HubClient(endpoint=fake_hub.endpoint, timeout=5, quiet=True))


# ------------------------------------------------------------------------------------------------
# the catalog itself
# ------------------------------------------------------------------------------------------------
def test_catalog_records_are_consistent():
    cat = hubmod.load_catalog(known_datasets=set(catalog.DATASETS))
    fetchable = {f.dataset for f in cat.files if f.mirror.unverified is None}
    # the ten CoOp datasets except ImageNet, plus ImageNet-A / -R, are on the zhengli97 mirror
    assert fetchable == {"Caltech101", "DescribableTextures", "EuroSAT", "FGVCAircraft", "Food101", "ImageNetA",
                         "ImageNetR", "OxfordFlowers", "OxfordPets", "StanfordCars", "SUN397", "UCF101"}
    assert cat.mirrors[REPO].revision == "ceb3112337fb6e1bf71534e355ca5569b63f19a6"
    assert cat.mirrors["koorye/datasets"].unverified and not cat.files_for("Caltech101")[1:]
    for f in cat.files:
        assert (f.sha256 is None) == (f.checksum_source is None)
    assert cat.order_for("StanfordCars") == ["hub"] and cat.order_for("ImageNet") == []
    assert cat.order_for("DescribableTextures") == ["original", "hub"]


def test_malformed_catalog_is_named(tmp_path):
    raw = json.load(open(hubmod.CATALOG_FILE))
    raw["files"][0]["sha256"] = "abc"
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(hubmod.HubError, match=r"files\[0\] \(caltech-101.zip\): sha256 must be 64"):
        hubmod.load_catalog(str(bad))


# ------------------------------------------------------------------------------------------------
# download + layout conversion, every dataset the mirror holds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HUB_DATASETS)
def test_hub_download_converts_to_the_coop_layout(fake_hub, monkeypatch, tmp_path, name):
    minis = serve(fake_hub, monkeypatch, tmp_path, [name], nest_cars=(name == "StanfordCars"))
    info = catalog.DATASETS[name]
    dst = str(tmp_path / "data")
    assert run(fake_hub, [info.yaml, "--root", dst, "--source", "hub"]) == download.EXIT_OK
    ds = build_dataset(dst, name)
    assert ds.classnames == minis[name].classnames
    assert len(ds.test) == minis[name].sizes[2]
    ddir = info.dataset_path(dst)
    # Dassl's pickles were dropped, nested folders flattened, nothing else left behind
    assert not osp.exists(osp.join(ddir, "split_fewshot"))
    assert not [f for _, _, fs in os.walk(ddir) for f in fs if f.endswith(".pkl")]
    if name == "StanfordCars":
        assert not osp.isdir(osp.join(ddir, "cars_train", "cars_train"))
    assert sorted(os.listdir(dst)) == [info.dataset_dir]
    # the install manifest records the source, and the doctor verifies the folder against it
    manifest = json.load(open(osp.join(ddir, MANIFEST_NAME)))
    assert manifest["source"]["repo_id"] == REPO and manifest["source"]["revision"].startswith("ceb3112")
    v = doctor.check_dataset(info, dst, verify=True)
    assert v.status != doctor.PROBLEM and any("--verify: all" in d for d in v.details), v.details
    # nothing but the local Hub was asked, and the archive was transferred once, from its CDN URL
    (record,) = download.hub_catalog().files_for(name)
    assert {e[0] for e in fake_hub.log} == {"HEAD", "GET"}
    assert fake_hub.gets(record.filename) == [("GET", record.filename, None, len(fake_hub.files[(REPO, record.filename)]))]


def test_archive_without_a_top_folder(fake_hub, monkeypatch, tmp_path):
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT"], arc_top=False)
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub"]) == 0
    assert build_dataset(dst, "EuroSAT").num_classes == len(MINIS["EuroSAT"](str(tmp_path / "x")).classnames)


def test_default_order_uses_the_hub_for_stanford_cars(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["StanfordCars"])
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["stanford_cars", "--root", dst]) == 0  # no --source: the default order
    assert osp.isfile(catalog.DATASETS["StanfordCars"].split_path(dst))
    assert "doctor says" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# integrity
# ------------------------------------------------------------------------------------------------
def test_interrupted_download_resumes(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["DescribableTextures"])
    data = fake_hub.files[(REPO, "dtd.zip")]
    cut = len(data) // 3
    fake_hub.cut["dtd.zip"] = cut
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["dtd", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    err = capsys.readouterr().err
    assert "run the same command again to resume" in err
    part = osp.join(dst, download.DOWNLOADS_DIR, "hub", REPO.replace("/", "__"), "dtd.zip.part")
    assert os.path.getsize(part) == cut
    assert not osp.exists(osp.join(dst, "dtd"))  # nothing half-installed
    fake_hub.log.clear()
    assert run(fake_hub, ["dtd", "--root", dst, "--source", "hub"]) == 0
    (get,) = fake_hub.gets("dtd.zip")
    assert get[2] == f"bytes={cut}-" and get[3] == len(data) - cut  # only the rest was transferred
    assert build_dataset(dst, "DescribableTextures").num_classes > 0
    assert not osp.exists(part)


def test_checksum_failure_installs_nothing(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["UCF101"])
    fake_hub.corrupt.add("ucf101.zip")
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["ucf101", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    err = capsys.readouterr().err
    assert "checksum failure" in err and "sha256" in err and "ucf101.zip" in err
    assert not osp.exists(osp.join(dst, "ucf101"))
    assert not osp.exists(osp.join(dst, download.DOWNLOADS_DIR))  # the bad file was removed
    assert not [p for p in os.listdir(dst) if p.startswith(".vlprompt_staging")]


def test_published_checksum_is_used_when_none_is_recorded(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT"])  # eurosat.zip has no recorded sha256
    assert download.hub_catalog().files_for("EuroSAT")[0].sha256 is None
    fake_hub.corrupt.add("eurosat.zip")
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert "checksum failure" in capsys.readouterr().err


def test_record_disagreeing_with_the_hub_downloads_nothing(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["DescribableTextures"])
    cat = download.hub_catalog()
    files = [dataclasses.replace(f, sha256="0" * 64) if f.filename == "dtd.zip" else f for f in cat.files]
    monkeypatch.setattr(download, "_CATALOG", dataclasses.replace(cat, files=files))
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["dtd", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert "the record or the mirror is wrong" in capsys.readouterr().err
    assert fake_hub.gets("dtd.zip") == []


def test_recorded_member_checksum_is_checked(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["OxfordFlowers"])
    cat = download.hub_catalog()
    rel = "split_zhou_OxfordFlowers.json"
    files = [dataclasses.replace(f, members={rel: {"sha256": "1" * 64, "source": "test"}})
             if f.filename == "oxford_flowers.zip" else f for f in cat.files]
    monkeypatch.setattr(download, "_CATALOG", dataclasses.replace(cat, files=files))
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["oxford_flowers", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert f"{rel} in oxford_flowers.zip: sha256" in capsys.readouterr().err
    assert not osp.exists(osp.join(dst, "oxford_flowers"))


def test_corrupt_zip_member_fails_the_extraction_cleanly(fake_hub, monkeypatch, tmp_path, capsys):
    record, data, _ = fabricate("EuroSAT", tmp_path)
    # flip a byte inside the first member's compressed data: the archive's own CRC-32 catches it
    zf = zipfile.ZipFile(tmp_path / record.filename)
    info = zf.infolist()[-1]
    zf.close()
    off = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 2
    bad = bytearray(data)
    bad[off] ^= 0xFF
    fake_hub.files[(REPO, record.filename)] = bytes(bad)
    use_records(monkeypatch, {record.filename: (bytes(bad), {})})
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert "corrupt or truncated" in capsys.readouterr().err
    assert not osp.exists(osp.join(dst, "eurosat"))
    assert not [p for p in os.listdir(dst) if p.startswith(".vlprompt_staging")]


def test_offline_mode_uses_only_verified_downloads(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT"])
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub", "--keep-archives"]) == 0
    shutil.rmtree(osp.join(dst, "eurosat"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake_hub.log.clear()
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub"]) == 0
    assert fake_hub.log == []  # nothing contacted
    shutil.rmtree(dst)
    assert run(fake_hub, ["eurosat", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert "offline mode (HF_HUB_OFFLINE is set)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# --all, --inspect-mirror, --list
# ------------------------------------------------------------------------------------------------
def test_all_reports_each_dataset_and_ends_with_the_manual_steps(fake_hub, monkeypatch, tmp_path, capsys):
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT", "DescribableTextures"])
    subset = {n: catalog.DATASETS[n] for n in ("ImageNet", "EuroSAT", "DescribableTextures")}
    monkeypatch.setattr(download, "DATASETS", subset)
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["--all", "--root", dst, "--source", "hub"]) == download.EXIT_MANUAL
    out = capsys.readouterr().out
    summary = out[out.index("Summary:"):]
    assert "EuroSAT" in summary and f"hub ({REPO})" in summary and "downloaded" in summary
    tail = summary[summary.index("Needs a manual step:"):]
    assert "ImageNet" in tail and "https://image-net.org/download.php" in tail
    assert osp.join(dst, "imagenet", "images", "train") in tail  # the exact paths, $DATA filled in
    # a second run: everything present, nothing downloaded
    fake_hub.log.clear()
    assert run(fake_hub, ["--all", "--root", dst, "--source", "hub"]) == download.EXIT_MANUAL
    assert "already present" in capsys.readouterr().out and fake_hub.gets("eurosat.zip") == []


def test_inspect_mirror_prints_sizes_and_sha256(fake_hub, capsys):
    fake_hub.files[(REPO, "a.zip")] = b"abc"
    assert run(fake_hub, ["--inspect-mirror", REPO]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["files"] == [{"path": "a.zip", "size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}]


def test_list_shows_sources_and_checks(capsys):
    assert download.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "koorye/datasets" in out and "NOT USED" in out
    row = next(line for line in out.splitlines() if line.startswith("StanfordCars"))
    assert "hub" in row and "sha256 recorded" in row


def test_interrupted_extraction_leaves_no_half_built_folder(fake_hub, monkeypatch, tmp_path):
    serve(fake_hub, monkeypatch, tmp_path, ["Caltech101"])
    real = download.extract_archive

    def extract_then_interrupt(path, dest_dir):
        real(path, dest_dir)  # everything is on disk in the staging folder ...
        raise KeyboardInterrupt  # ... when the user presses Ctrl-C

    monkeypatch.setattr(download, "extract_archive", extract_then_interrupt)
    dst = str(tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        run(fake_hub, ["caltech101", "--root", dst, "--source", "hub", "--keep-archives"])
    assert not osp.exists(osp.join(dst, "caltech-101"))
    assert not [p for p in os.listdir(dst) if p.startswith(".vlprompt_staging")]
    # the verified archive is kept, so the next run only extracts
    monkeypatch.setattr(download, "extract_archive", real)
    fake_hub.log.clear()
    assert run(fake_hub, ["caltech101", "--root", dst, "--source", "hub"]) == 0
    assert fake_hub.gets("caltech-101.zip") == []
    assert build_dataset(dst, "Caltech101").num_classes > 0


def test_the_token_is_not_sent_off_the_hub(fake_hub, monkeypatch, tmp_path):
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT"])
    sent = []
    orig = hubmod.urllib.request.urlopen

    def spy(request, *a, **k):
        sent.append((request.full_url, {key.lower(): v for key, v in request.header_items()}))
        return orig(request, *a, **k)

    monkeypatch.setattr(hubmod.urllib.request, "urlopen", spy)
    client = HubClient(endpoint=fake_hub.endpoint, token="hf_secret", timeout=5, quiet=True)
    (record,) = download.hub_catalog().files_for("EuroSAT")
    client.download(record, str(tmp_path / "same_host"))  # the "CDN" on the Hub's host: token sent
    # the CDN on another host name (localhost instead of 127.0.0.1): no token
    monkeypatch.setattr(fake_hub, "cdn_url", lambda repo, name: FakeHub.cdn_url(fake_hub, repo, name).replace(
        "127.0.0.1", "localhost"))
    client.download(record, str(tmp_path / "other_host"))
    (same, other) = sent
    assert same[0].startswith("http://127.0.0.1:") and same[1]["authorization"] == "Bearer hf_secret"
    assert other[0].startswith("http://localhost:") and "authorization" not in other[1]


def test_marker_folder_shipped_still_packed(fake_hub, monkeypatch, tmp_path):
    # caltech-101.zip holding caltech-101/101_ObjectCategories.tar.gz (as the original release does)
    import tarfile

    src = str(tmp_path / "src")
    mini = MINIS["Caltech101"](src)
    build_dataset(src, "Caltech101")
    ddir = catalog.DATASETS["Caltech101"].dataset_path(src)
    with tarfile.open(osp.join(ddir, "101_ObjectCategories.tar.gz"), "w:gz") as tf:
        tf.add(osp.join(ddir, "101_ObjectCategories"), arcname="101_ObjectCategories")
    shutil.rmtree(osp.join(ddir, "101_ObjectCategories"))
    archive = str(tmp_path / "caltech-101.zip")
    _zip_dir(archive, ddir, "caltech-101")
    data = open(archive, "rb").read()
    fake_hub.files[(REPO, "caltech-101.zip")] = data
    use_records(monkeypatch, {"caltech-101.zip": (data, {})})
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["caltech101", "--root", dst, "--source", "hub"]) == 0
    assert build_dataset(dst, "Caltech101").classnames == mini.classnames
    assert not osp.exists(osp.join(dst, "caltech-101", "101_ObjectCategories.tar.gz"))


def test_archive_without_the_dataset_says_what_it_looked_for(fake_hub, monkeypatch, tmp_path, capsys):
    archive = tmp_path / "dtd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dtd/README.txt", "not the images")
    data = archive.read_bytes()
    fake_hub.files[(REPO, "dtd.zip")] = data
    use_records(monkeypatch, {"dtd.zip": (data, {})})
    dst = str(tmp_path / "data")
    assert run(fake_hub, ["dtd", "--root", dst, "--source", "hub"]) == download.EXIT_FAILED
    assert "does not contain images" in capsys.readouterr().err
    assert not osp.exists(osp.join(dst, "dtd"))


def test_hf_endpoint_is_honoured(fake_hub, monkeypatch, tmp_path):
    # HF_ENDPOINT is read by huggingface_hub when it is imported; set what it sets (a subprocess would
    # spend most of its time importing torch)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake_hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    serve(fake_hub, monkeypatch, tmp_path, ["EuroSAT"])
    dst = str(tmp_path / "data")
    client = HubClient(timeout=5, quiet=True)  # no endpoint given: the environment's
    assert download.main(["eurosat", "--root", dst, "--source", "hub"], fetcher=no_drive, hub=client) == 0
    assert fake_hub.gets("eurosat.zip")
    assert osp.isdir(catalog.DATASETS["EuroSAT"].image_path(dst))
