"""Download helper: fetch a benchmark dataset and arrange it into the CoOp layout.

    python -m vlprompt.data.download NAME [NAME ...] --root DATA [--split-only] [--keep-archives]
                                     [--timeout SECONDS]
    python -m vlprompt.data.download --list

NAME is a registry or yaml name (``DescribableTextures`` or ``dtd``), or ``all``. For datasets with
public archives the files are fetched with ``urllib`` (mirrors tried in order, MD5 checked where
known) into ``DATA/.vlprompt_downloads/``, extracted into a staging folder and moved into place
(``DATA/<dataset_dir>/...``), then CoOp's ``split_zhou_<Name>.json`` is fetched from its Google Drive
copy. Folders that already exist are never overwritten. ImageNet and Stanford Cars (whose official
links are gone) cannot be fetched: their manual steps and known mirrors are printed instead.

Exit status: 0 done, 1 a download or extraction failed, 3 manual steps are needed.
Without network access every fetch fails within ``--timeout`` seconds (default 15) with a message
that says so.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import shutil
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from vlprompt.data.catalog import DATASETS, gdrive_url, gdrive_view_url, get_info

__all__ = [
    "DownloadError",
    "fetch_url",
    "extract_archive",
    "download_dataset",
    "fetch_split_file",
    "ARRANGERS",
    "main",
]

DOWNLOADS_DIR = ".vlprompt_downloads"
USER_AGENT = "vlprompt-dataset-downloader"
DEFAULT_TIMEOUT = 15.0
EXIT_OK, EXIT_FAILED, EXIT_MANUAL = 0, 1, 3


class DownloadError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# Fetching
# ------------------------------------------------------------------------------------------------
def _md5(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _reason(err):
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason})"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    return str(reason)


def fetch_url(url, dest, md5=None, timeout=DEFAULT_TIMEOUT, quiet=False):
    """Download ``url`` to ``dest`` (via ``dest.part``, renamed when complete and verified).

    Raises :class:`DownloadError` with a clear message when the host cannot be reached (offline),
    the server answers with an error or a web page where a file was expected, or the MD5 differs.
    """
    host = urllib.parse.urlparse(url).netloc
    part = dest + ".part"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{host} answered HTTP {e.code} ({e.reason}) for {url}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f"cannot reach {host}: {_reason(e)}. Is this machine offline or behind a proxy? "
            f"(set https_proxy / http_proxy, or download {url} by hand)"
        ) from e
    h = hashlib.md5()
    os.makedirs(osp.dirname(osp.abspath(dest)), exist_ok=True)
    try:
        with response, open(part, "wb") as out:
            ctype = response.headers.get("Content-Type", "") or ""
            if ctype.startswith("text/html") and not url.endswith((".html", ".htm")):
                raise DownloadError(
                    f"{host} returned a web page instead of the file {url} (a login/quota/confirmation "
                    "page, or the link moved)"
                )
            total = int(response.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            while True:
                try:
                    block = response.read(1 << 20)
                except (socket.timeout, TimeoutError, OSError) as e:
                    raise DownloadError(f"download of {url} stalled: {_reason(e)}") from e
                if not block:
                    break
                out.write(block)
                h.update(block)
                done += len(block)
                now = time.time()
                if not quiet and now - last > 2.0:
                    last = now
                    size = f" / {total / 1e6:,.1f} MB" if total else " MB"
                    print(f"  {osp.basename(dest)}: {done / 1e6:,.1f}{size}", flush=True)
    except BaseException:
        if osp.exists(part):
            os.remove(part)
        raise
    if md5 is not None and h.hexdigest() != md5:
        os.remove(part)
        raise DownloadError(f"MD5 mismatch for {url}: got {h.hexdigest()}, expected {md5}")
    os.replace(part, dest)
    return dest


def _fetch_first(urls, dest, md5, timeout, fetcher):
    """Try the mirrors in order; one clear error listing every failure."""
    errors = []
    for url in urls:
        print(f"Downloading {url}")
        try:
            return fetcher(url, dest, md5=md5, timeout=timeout)
        except DownloadError as e:
            errors.append(f"{url}: {e}")
            print(f"  failed: {e}")
    raise DownloadError(f"could not download {osp.basename(dest)}:\n    " + "\n    ".join(errors))


# ------------------------------------------------------------------------------------------------
# Extraction and arranging
# ------------------------------------------------------------------------------------------------
def extract_archive(path, dest_dir):
    """Extract a zip or tar(.gz) archive into ``dest_dir``, refusing members that escape it."""
    os.makedirs(dest_dir, exist_ok=True)
    dest_real = osp.realpath(dest_dir)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                target = osp.realpath(osp.join(dest_dir, member))
                if target != dest_real and not target.startswith(dest_real + os.sep):
                    raise DownloadError(f"{path}: refusing to extract {member!r} outside {dest_dir}")
            zf.extractall(dest_dir)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            if hasattr(tarfile, "data_filter"):
                try:
                    tf.extractall(dest_dir, filter="data")
                except tarfile.FilterError as e:
                    raise DownloadError(f"{path}: unsafe archive member: {e}") from e
            else:  # Python without extraction filters: check the paths ourselves
                for member in tf.getmembers():
                    target = osp.realpath(osp.join(dest_dir, member.name))
                    if target != dest_real and not target.startswith(dest_real + os.sep):
                        raise DownloadError(f"{path}: refusing to extract {member.name!r} outside {dest_dir}")
                tf.extractall(dest_dir)
    else:
        raise DownloadError(f"{path} is neither a zip nor a tar archive (a web page saved instead of the file?)")


def _find_dir(top, predicate, what):
    """First directory at or under ``top`` (breadth-first, sorted) for which ``predicate`` holds."""
    queue = [top]
    while queue:
        cur = queue.pop(0)
        if predicate(cur):
            return cur
        try:
            children = sorted(e.path for e in os.scandir(cur) if e.is_dir())
        except OSError:
            continue
        queue.extend(children)
    raise DownloadError(f"the downloaded archive does not contain {what} (looked under {top})")


def _named(name):
    return lambda p: osp.basename(p) == name


def _containing(child):
    return lambda p: osp.exists(osp.join(p, child))


def _move(src, dst):
    """Move ``src`` to ``dst``; an existing non-empty ``dst`` is never overwritten."""
    if osp.lexists(dst):
        if osp.isdir(dst) and not os.listdir(dst):
            os.rmdir(dst)
        else:
            raise DownloadError(f"{dst} already exists; remove it to download again")
    os.makedirs(osp.dirname(dst), exist_ok=True)
    shutil.move(src, dst)


def _move_contents(src_dir, dst_dir):
    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        _move(osp.join(src_dir, name), osp.join(dst_dir, name))


def _arrange_pets(files, staging, ddir):
    extract_archive(files["images.tar.gz"], staging)
    extract_archive(files["annotations.tar.gz"], staging)
    _move(_find_dir(staging, _named("images"), "images/"), osp.join(ddir, "images"))
    _move(_find_dir(staging, _containing("trainval.txt"), "annotations/trainval.txt"), osp.join(ddir, "annotations"))


def _arrange_flowers(files, staging, ddir):
    extract_archive(files["102flowers.tgz"], staging)
    _move(_find_dir(staging, _named("jpg"), "jpg/"), osp.join(ddir, "jpg"))
    shutil.copy2(files["imagelabels.mat"], osp.join(ddir, "imagelabels.mat"))


def _arrange_fgvc(files, staging, ddir):
    extract_archive(files["fgvc-aircraft-2013b.tar.gz"], staging)
    _move_contents(_find_dir(staging, _containing("variants.txt"), "data/variants.txt"), ddir)


def _arrange_dtd(files, staging, ddir):
    extract_archive(files["dtd-r1.0.1.tar.gz"], staging)
    src = _find_dir(staging, lambda p: osp.isdir(osp.join(p, "images")) and osp.isdir(osp.join(p, "labels")),
                    "dtd/images and dtd/labels")
    _move_contents(src, ddir)


def _arrange_eurosat(files, staging, ddir):
    extract_archive(files["EuroSAT.zip"], staging)
    _move(_find_dir(staging, lambda p: osp.isdir(osp.join(p, "AnnualCrop")), "the EuroSAT class folders"),
          osp.join(ddir, "2750"))


def _arrange_food101(files, staging, ddir):
    extract_archive(files["food-101.tar.gz"], staging)
    src = _find_dir(staging, lambda p: osp.isdir(osp.join(p, "images")) and osp.isdir(osp.join(p, "meta")),
                    "food-101/images and food-101/meta")
    _move_contents(src, ddir)


def _arrange_sun397(files, staging, ddir):
    images = osp.join(staging, "images")
    parts = osp.join(staging, "partitions")
    extract_archive(files["SUN397.tar.gz"], images)
    extract_archive(files["Partitions.zip"], parts)
    _move(_find_dir(images, lambda p: osp.isdir(osp.join(p, "a")), "SUN397/a/..."), osp.join(ddir, "SUN397"))
    src = _find_dir(parts, _containing("Training_01.txt"), "Training_01.txt")
    for name in sorted(os.listdir(src)):
        if name.endswith(".txt"):
            _move(osp.join(src, name), osp.join(ddir, name))
    if not osp.exists(osp.join(ddir, "ClassName.txt")):
        inner = osp.join(ddir, "SUN397", "ClassName.txt")
        if not osp.exists(inner):
            raise DownloadError("neither Partitions.zip nor SUN397.tar.gz contains ClassName.txt")
        shutil.copy2(inner, osp.join(ddir, "ClassName.txt"))


def _arrange_caltech101(files, staging, ddir):
    extract_archive(files["caltech-101.zip"], staging)
    try:
        src = _find_dir(staging, _named("101_ObjectCategories"), "101_ObjectCategories/")
    except DownloadError:
        inner = _find_dir(staging, _containing("101_ObjectCategories.tar.gz"), "101_ObjectCategories.tar.gz")
        extract_archive(osp.join(inner, "101_ObjectCategories.tar.gz"), osp.join(staging, "inner"))
        src = _find_dir(osp.join(staging, "inner"), _named("101_ObjectCategories"), "101_ObjectCategories/")
    _move(src, osp.join(ddir, "101_ObjectCategories"))


def _arrange_ucf101(files, staging, ddir):
    extract_archive(files["UCF-101-midframes.zip"], staging)
    _move(_find_dir(staging, _named("UCF-101-midframes"), "UCF-101-midframes/"), osp.join(ddir, "UCF-101-midframes"))


def _arrange_single(archive, folder, target):
    def arrange(files, staging, ddir):
        extract_archive(files[archive], staging)
        _move(_find_dir(staging, _named(folder), f"{folder}/"), osp.join(ddir, target))

    return arrange


# registry name -> (arranging function, paths under the dataset folder that it creates)
ARRANGERS = {
    "OxfordPets": (_arrange_pets, ("images", "annotations")),
    "OxfordFlowers": (_arrange_flowers, ("jpg", "imagelabels.mat")),
    "FGVCAircraft": (_arrange_fgvc, ("images", "variants.txt")),
    "DescribableTextures": (_arrange_dtd, ("images",)),
    "EuroSAT": (_arrange_eurosat, ("2750",)),
    "Food101": (_arrange_food101, ("images",)),
    "SUN397": (_arrange_sun397, ("SUN397", "ClassName.txt", "Training_01.txt")),
    "Caltech101": (_arrange_caltech101, ("101_ObjectCategories",)),
    "UCF101": (_arrange_ucf101, ("UCF-101-midframes",)),
    "ImageNetV2": (
        _arrange_single(
            "imagenetv2-matched-frequency.tar.gz",
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2-matched-frequency-format-val",
        ),
        ("imagenetv2-matched-frequency-format-val",),
    ),
    "ImageNetA": (_arrange_single("imagenet-a.tar", "imagenet-a", "imagenet-a"), ("imagenet-a",)),
    "ImageNetR": (_arrange_single("imagenet-r.tar", "imagenet-r", "imagenet-r"), ("imagenet-r",)),
    "ImageNetSketch": (_arrange_single("ImageNet-Sketch.zip", "sketch", "images"), ("images",)),
}


# ------------------------------------------------------------------------------------------------
# Split / extra JSON files from Google Drive
# ------------------------------------------------------------------------------------------------
def _fetch_json_from_drive(file_id, dest, timeout, fetcher, check_split=False):
    tmp = dest + ".download"
    try:
        fetcher(gdrive_url(file_id), tmp, md5=None, timeout=timeout)
        try:
            with open(tmp, "r") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DownloadError(
                f"Google Drive did not return the JSON file {osp.basename(dest)} (quota or a changed "
                f"link?): {e}. Download it by hand from {gdrive_view_url(file_id)} into {osp.dirname(dest)}"
            ) from e
        if check_split and not all(isinstance(data.get(k), list) for k in ("train", "val", "test")):
            raise DownloadError(f"{gdrive_view_url(file_id)} is not a split file (no train/val/test lists)")
        os.replace(tmp, dest)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return dest


def fetch_split_file(info, root, timeout=DEFAULT_TIMEOUT, fetcher=fetch_url):
    """Fetch CoOp's ``split_zhou_<Name>.json`` (if the dataset has one and it is absent)."""
    if not info.split_gdrive_id:
        return None
    dest = info.split_path(root)
    if osp.exists(dest):
        print(f"{info.split_file} already present")
        return dest
    print(f"Fetching {info.split_file} (CoOp's Google Drive copy)")
    os.makedirs(info.dataset_path(root), exist_ok=True)
    return _fetch_json_from_drive(info.split_gdrive_id, dest, timeout, fetcher, check_split=True)


def _data_present(info, root):
    """True when what the archives provide is already in the dataset folder."""
    ddir = info.dataset_path(root)
    provides = ARRANGERS[info.name][1] if info.name in ARRANGERS else info.raw_files
    return all(osp.exists(osp.join(ddir, rel)) for rel in provides)


def download_dataset(info, root, split_only=False, keep_archives=False, timeout=DEFAULT_TIMEOUT,
                     fetcher=fetch_url):
    """Fetch and arrange one dataset; returns :data:`EXIT_OK` or :data:`EXIT_MANUAL`.

    ``fetcher(url, dest, md5=..., timeout=...)`` does the transfer (tests pass a local one).
    Raises :class:`DownloadError` on failure; nothing half-arranged is left in the dataset folder
    (archives are extracted and arranged in a staging folder that is removed afterwards, and only
    the finished result is moved into place). Existing folders are never overwritten.
    """
    root = osp.abspath(osp.expanduser(root))
    ddir = info.dataset_path(root)
    status = EXIT_OK
    if not split_only:
        if _data_present(info, root):
            print(f"{info.name}: the data is already in {ddir}; skipping the archives")
        elif not info.archives:
            print(f"{info.name} cannot be downloaded automatically.\n{info.manual.replace('$DATA', root)}")
            status = EXIT_MANUAL
        else:
            clash = [rel for rel in ARRANGERS[info.name][1] if osp.lexists(osp.join(ddir, rel))]
            if clash:
                raise DownloadError(
                    f"{info.name}: {', '.join(osp.join(ddir, rel) for rel in clash)} already exist(s) but the "
                    "dataset is incomplete; remove them to download again"
                )
            downloads = osp.join(root, DOWNLOADS_DIR)
            files = {}
            for archive in info.archives:
                dest = osp.join(downloads, archive.filename)
                if osp.exists(dest) and (archive.md5 is None or _md5(dest) == archive.md5):
                    print(f"Using the already downloaded {dest}")
                else:
                    _fetch_first(archive.urls, dest, archive.md5, timeout, fetcher)
                files[archive.filename] = dest
            # Extract and arrange inside a staging folder; only a complete result is moved into
            # the dataset folder, so a failure leaves nothing half-arranged there.
            staging = osp.join(root, f".vlprompt_staging_{info.yaml}")
            if osp.exists(staging):
                shutil.rmtree(staging)
            arranged = osp.join(staging, "arranged")
            os.makedirs(arranged)
            try:
                print(f"Extracting {', '.join(files)}")
                ARRANGERS[info.name][0](files, osp.join(staging, "work"), arranged)
                _move_contents(arranged, ddir)
                print(f"Arranged into {ddir}")
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if not keep_archives:
                for path in files.values():
                    if osp.exists(path):
                        os.remove(path)
                if osp.isdir(downloads) and not os.listdir(downloads):
                    os.rmdir(downloads)
        for file_id, fname in info.extra_files:
            dest = osp.join(ddir, fname)
            if not osp.exists(dest) and status == EXIT_OK:
                print(f"Fetching {fname}")
                _fetch_json_from_drive(file_id, dest, timeout, fetcher)
    if info.split_gdrive_id:
        fetch_split_file(info, root, timeout, fetcher)
    elif split_only:
        print(f"{info.name} has no split file to fetch ({info.notes.get('split', 'none is used')})")
    if status == EXIT_OK:
        print(f"{info.name}: done. Check it with: python -m vlprompt.data.doctor --root {root} --dataset {info.yaml}")
    return status


def _print_list():
    print(f"{'DATASET':<20}  {'YAML':<16}  {'FOLDER':<22}  HOW")
    for info in DATASETS.values():
        how = "download" if info.archives else "manual (steps printed)"
        if not info.archives and info.split_gdrive_id:
            how += " + split file"
        print(f"{info.name:<20}  {info.yaml:<16}  {info.dataset_dir:<22}  {how}")


def main(argv=None, fetcher=fetch_url):
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.data.download",
        description="Download a benchmark dataset and arrange it into the CoOp layout (see docs/DATASETS.md).",
    )
    parser.add_argument("names", nargs="*", help="dataset registry or yaml names, or 'all'")
    parser.add_argument("--root", help="the dataset root (DATASET.ROOT / train.py --root)")
    parser.add_argument("--split-only", action="store_true", help="only fetch the split_zhou_*.json file")
    parser.add_argument("--keep-archives", action="store_true", help=f"keep the archives in ROOT/{DOWNLOADS_DIR}")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds")
    parser.add_argument("--list", action="store_true", help="list the datasets and how each is obtained")
    args = parser.parse_args(argv)

    if args.list:
        _print_list()
        return EXIT_OK
    if not args.names or not args.root:
        parser.error("give dataset name(s) and --root (or --list)")
    try:
        infos = list(DATASETS.values()) if args.names == ["all"] else [get_info(n) for n in args.names]
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2

    result = EXIT_OK
    for info in infos:
        try:
            status = download_dataset(info, args.root, args.split_only, args.keep_archives, args.timeout, fetcher)
        except DownloadError as e:
            print(f"\n{info.name}: download failed: {e}", file=sys.stderr)
            if info.split_gdrive_id:
                print(f"  split file by hand: {gdrive_view_url(info.split_gdrive_id)} -> "
                      f"{info.split_path(args.root)}", file=sys.stderr)
            print(f"  see docs/DATASETS.md ({info.name}) for the manual steps", file=sys.stderr)
            result = EXIT_FAILED
            continue
        if status == EXIT_MANUAL and result == EXIT_OK:
            result = EXIT_MANUAL
    return result


if __name__ == "__main__":
    sys.exit(main())
