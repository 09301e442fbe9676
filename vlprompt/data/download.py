"""Download helper: fetch a benchmark dataset and arrange it into the CoOp layout.

    python -m vlprompt.data.download NAME [NAME ...] --root DATA [--source auto|original|hub]
                                     [--split-only] [--keep-archives] [--timeout SECONDS]
                                     [--endpoint URL]
    python -m vlprompt.data.download --all --root DATA [--source ...]
    python -m vlprompt.data.download --list
    python -m vlprompt.data.download descriptions[:coprompt|:cupl] --root DATA   (class descriptions)
    python -m vlprompt.data.download --inspect-mirror REPO [--repo-type model|dataset] [--revision REV]

NAME is a registry or yaml name (``DescribableTextures`` or ``dtd``), or ``all`` (same as ``--all``).

Sources. ``original``: the dataset authors' archives, fetched with ``urllib`` (mirrors tried in
order, MD5 checked where known, an interrupted transfer resumed by the next run) into
``DATA/.vlprompt_downloads/``, then CoOp's
``split_zhou_<Name>.json`` from its Google Drive copy. ``hub``: a community mirror on the Hugging Face
Hub (``vlprompt/data/hub_mirrors.json`` records which repository and revision holds which archive,
its layout, size and sha256; ``vlprompt.data.hub`` fetches it resumably and verified). ``auto`` (the
default) tries each dataset's sources in its documented order (``--list``; docs/DATASETS.md).

Every archive is extracted and converted in a staging folder, checked (sizes and checksums of the
archive, recorded member checksums, the doctor on the staged tree), and only then moved into place
(``DATA/<dataset_dir>/...``); an install manifest (``.vlprompt_manifest.json``: size and CRC-32 of
every installed file) lets ``python -m vlprompt.data.doctor --verify`` check the folder later. The
doctor runs on the result. Folders that already exist are never overwritten. ImageNet cannot be
fetched (licence): its manual steps are printed (with ``--all``, at the end).

Exit status: 0 done, 1 a download, extraction or check failed, 2 unknown dataset name,
3 manual steps are needed. Without network access every fetch fails within ``--timeout`` seconds
(default 15) with a message that says so; ``HF_HUB_OFFLINE=1`` uses only already downloaded files.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request  # noqa: F401  (tests patch vlprompt.data.download.urllib.request)
import zipfile
import zlib

from vlprompt.data.catalog import DATASETS, gdrive_url, gdrive_view_url, get_info
from vlprompt.data.fetch import DEFAULT_TIMEOUT, DownloadError, _md5, fetch_url
from vlprompt.data.hub import HubClient, HubError, load_catalog, sources_with_data
from vlprompt.data.integrity import IntegrityError, check_file, write_manifest

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
EXIT_OK, EXIT_FAILED, EXIT_MANUAL = 0, 1, 3


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
    """Extract a zip or tar(.gz) archive into ``dest_dir``, refusing members that escape it.

    A corrupt or truncated archive (a zip member whose CRC-32 differs, a tar that ends early) raises
    :class:`DownloadError` naming the archive.
    """
    try:
        _extract_archive(path, dest_dir)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DownloadError(f"{path} is corrupt or truncated ({e}); delete it and download it again") from e


def _extract_archive(path, dest_dir):
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
        for leftover in (tmp, tmp + ".part"):
            if osp.exists(leftover):
                os.remove(leftover)
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
    return all(osp.exists(osp.join(ddir, rel)) for rel in _markers(info))


def _markers(info):
    """Paths under the dataset folder that an installation provides (and that identify it)."""
    return ARRANGERS[info.name][1] if info.name in ARRANGERS else info.raw_files


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
_CATALOG = None


def hub_catalog():
    """The parsed ``hub_mirrors.json`` (cached)."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog(known_datasets=set(DATASETS))
    return _CATALOG


def available_sources(info):
    """The sources that can fetch ``info``'s data, in its documented default order."""
    return sources_with_data(info, hub_catalog())


def sources_to_try(info, source):
    if source == "auto":
        return available_sources(info)
    if source == "original":
        return ["original"] if info.archives else []
    if source == "hub":
        return ["hub"] if hub_catalog().files_for(info.name) else []
    raise ValueError(f"unknown source {source!r}")


def _no_source_message(info, source, root):
    cat = hub_catalog()
    if source == "hub":
        held = [f for f in cat.files if f.dataset == info.name]
        why = ("; ".join(f"{f.mirror.repo_id}: {f.mirror.unverified}" for f in held if f.mirror.unverified)
               or "no recorded mirror holds it")
        return f"{info.name}: no Hub mirror to fetch it from ({why})"
    if source == "original":
        return f"{info.name}: its original host offers no download"
    return f"{info.name}: nothing can fetch it automatically"


# ------------------------------------------------------------------------------------------------
# Installing from the original hosts and from the Hub
# ------------------------------------------------------------------------------------------------
def _fresh_staging(root, info):
    staging = osp.join(root, f".vlprompt_staging_{info.yaml}")
    if osp.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    return staging


def _install_original(info, root, keep_archives, timeout, fetcher):
    downloads = osp.join(root, DOWNLOADS_DIR)
    files = {}
    for archive in info.archives:
        dest = osp.join(downloads, archive.filename)
        if osp.exists(dest) and (archive.md5 is None or _md5(dest) == archive.md5):
            print(f"Using the already downloaded {dest}")
        else:
            _fetch_first(archive.urls, dest, archive.md5, timeout, fetcher)
        files[archive.filename] = dest
    # Extract and arrange inside a staging folder; only a complete result is moved into the
    # dataset folder, so a failure leaves nothing half-arranged there.
    staging = _fresh_staging(root, info)
    arranged = osp.join(staging, "arranged")
    os.makedirs(arranged)
    try:
        print(f"Extracting {', '.join(files)}")
        ARRANGERS[info.name][0](files, osp.join(staging, "work"), arranged)
        installed = _relative_files(arranged)
        _move_contents(arranged, info.dataset_path(root))
        print(f"Arranged into {info.dataset_path(root)}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for path in files.values():
            if osp.exists(path):
                os.remove(path)
        if osp.isdir(downloads) and not os.listdir(downloads):
            os.rmdir(downloads)
    source = {"source": "original", "archives": [
        {"filename": a.filename, "urls": list(a.urls), "md5": a.md5} for a in info.archives]}
    return installed, source


def _relative_files(top):
    out = []
    for dirpath, _, filenames in os.walk(top):
        for fn in filenames:
            out.append(osp.relpath(osp.join(dirpath, fn), top).replace(os.sep, "/"))
    return sorted(out)


_DROPPED_DIRS = ("split_fewshot", "__MACOSX")
_DROPPED_SUFFIXES = (".pkl", ".pickle")


def _drop_unsafe(top):
    """Remove Dassl's few-shot pickles (never unpickle downloaded files) and archive clutter."""
    dropped = []
    for dirpath, dirnames, filenames in os.walk(top, topdown=True):
        for d in list(dirnames):
            if d in _DROPPED_DIRS:
                shutil.rmtree(osp.join(dirpath, d))
                dirnames.remove(d)
                dropped.append(osp.relpath(osp.join(dirpath, d), top) + "/")
        for fn in filenames:
            if fn.lower().endswith(_DROPPED_SUFFIXES) or fn == ".DS_Store":
                os.remove(osp.join(dirpath, fn))
                dropped.append(osp.relpath(osp.join(dirpath, fn), top))
    return dropped


def _flatten_nested(folder):
    """``cars_train/cars_train/…`` (a single folder of the same name) -> ``cars_train/…``."""
    entries = [e for e in os.listdir(folder) if not e.startswith(".")]
    if len(entries) == 1 and entries[0] == osp.basename(folder) and osp.isdir(osp.join(folder, entries[0])):
        inner = osp.join(folder, entries[0])
        tmp = folder + ".flatten"
        os.rename(inner, tmp)
        for e in os.listdir(folder):
            p = osp.join(folder, e)
            shutil.rmtree(p) if osp.isdir(p) else os.remove(p)
        os.rmdir(folder)
        os.rename(tmp, folder)
        return True
    return False


def convert_coop_folder(info, archive, work, target):
    """Layout ``coop_folder``: the archive holds the dataset's CoOp folder, at its root or below.

    The folder holding the dataset's marker paths (e.g. ``101_ObjectCategories``; a marker folder
    shipped still packed as ``<marker>.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` is unpacked) is found, nested
    duplicates (``cars_train/cars_train``) are flattened, few-shot pickles are dropped, and the
    contents are moved into ``target``. Returns the dropped paths.
    """
    extract_archive(archive, work)
    markers = _markers(info)
    names = ", ".join(markers)
    holds = lambda p: all(osp.exists(osp.join(p, m)) for m in markers)  # noqa: E731
    try:
        src = _find_dir(work, holds, names)
    except DownloadError:
        # a folder shipped still packed (e.g. caltech-101/101_ObjectCategories.tar.gz): unpack, look again
        if not _unpack_inner(work, markers):
            raise
        src = _find_dir(work, holds, names)
    dropped = _drop_unsafe(src)
    for m in markers:
        top = osp.join(src, m.split("/")[0])
        if osp.isdir(top):
            _flatten_nested(top)
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(src)):
        _move(osp.join(src, name), osp.join(target, name))
    return dropped


_INNER_EXTS = (".tar.gz", ".tgz", ".tar", ".zip")


def _unpack_inner(work, markers):
    """Extract ``<marker>.tar.gz`` (or .tgz/.tar/.zip) archives found under ``work`` next to themselves."""
    wanted = {m.split("/")[0] + ext for m in markers for ext in _INNER_EXTS}
    found = False
    for dirpath, _, filenames in os.walk(work):
        for fn in sorted(filenames):
            if fn in wanted:
                inner = osp.join(dirpath, fn)
                extract_archive(inner, dirpath)
                os.remove(inner)
                found = True
    return found


HUB_LAYOUTS = {"coop_folder": convert_coop_folder}


def _verify_staged(info, stage_root):
    """Run the doctor on the staged dataset; a problem that loading would hit aborts the install."""
    from vlprompt.data.doctor import PROBLEM, check_dataset

    split = info.split_path(stage_root)
    if info.kind == "split" and not (split and osp.isfile(split)):
        return None  # the split file is fetched afterwards; the doctor runs on the result then
    v = check_dataset(info, stage_root)
    if v.status == PROBLEM:
        detail = "; ".join(d for d in v.details if d.startswith("[problem]") or d.startswith("  "))
        raise DownloadError(f"the converted archive fails the doctor's checks, nothing was installed: {detail}")
    return v


def _remove_empty_dirs(dest_dir, root):
    for d in (dest_dir, osp.dirname(dest_dir), osp.join(root, DOWNLOADS_DIR)):
        if osp.isdir(d) and not os.listdir(d):
            os.rmdir(d)


def _install_hub(info, root, keep_archives, hub):
    records = hub_catalog().files_for(info.name)
    errors = []
    for hf in records:
        print(f"Fetching {hf.label} (revision {hf.mirror.revision[:12]}, "
              f"{hf.approx_size or 'size unknown'}) from the Hub")
        dest_dir = osp.join(root, DOWNLOADS_DIR, "hub", hf.mirror.repo_id.replace("/", "__"))
        try:
            path = hub.download(hf, dest_dir)
        except HubError as e:
            errors.append(str(e))
            print(f"  failed: {e}")
            _remove_empty_dirs(dest_dir, root)
            continue
        staging = _fresh_staging(root, info)
        stage_root = osp.join(staging, "root")
        target = osp.join(stage_root, info.dataset_dir)
        try:
            print(f"Extracting {hf.filename} and converting it to the CoOp layout")
            dropped = HUB_LAYOUTS[hf.layout](info, path, osp.join(staging, "work"), target)
            if dropped:
                print(f"  dropped {len(dropped)} cached few-shot pickle(s)/clutter entries (e.g. {dropped[0]})")
            for rel, sha, where in hub.member_checks(hf):
                member = osp.join(target, rel)
                if not osp.isfile(member):
                    raise DownloadError(f"{hf.filename} has no {rel}, which the catalog records ({where})")
                try:
                    check_file(member, sha256=sha, what=f"{rel} in {hf.filename}")
                except IntegrityError as e:
                    raise DownloadError(str(e)) from e
            _verify_staged(info, stage_root)
            installed = _relative_files(target)
            _move_contents(target, info.dataset_path(root))
            print(f"Arranged into {info.dataset_path(root)}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not keep_archives:
            for p in (path, path + ".vlprompt.json"):
                if osp.exists(p):
                    os.remove(p)
            _remove_empty_dirs(dest_dir, root)
        source = {"source": "hub", "repo_id": hf.mirror.repo_id, "repo_type": hf.mirror.repo_type,
                  "revision": hf.mirror.revision, "filename": hf.filename, "size": hf.size,
                  "sha256": hf.sha256, "checksum_source": hf.checksum_source, "dropped": dropped}
        return installed, source
    raise DownloadError("; ".join(errors))


# ------------------------------------------------------------------------------------------------
# One dataset
# ------------------------------------------------------------------------------------------------
def download_dataset(info, root, split_only=False, keep_archives=False, timeout=DEFAULT_TIMEOUT,
                     fetcher=fetch_url, source="auto", hub=None, report=None):
    """Fetch and arrange one dataset; returns :data:`EXIT_OK` or :data:`EXIT_MANUAL`.

    ``source``: ``auto`` (the dataset's default order of sources, see ``hub_mirrors.json``),
    ``original`` or ``hub``. ``fetcher(url, dest, md5=..., timeout=...)`` does the transfers from the
    original hosts and Google Drive, ``hub`` (a :class:`vlprompt.data.hub.HubClient`) those from the
    Hub (tests pass local ones). Raises :class:`DownloadError` on failure; nothing half-arranged is
    left in the dataset folder (archives are extracted and converted in a staging folder, checked,
    and only the finished result is moved into place). Existing folders are never overwritten.
    ``report`` (a dict) receives what was done: ``source`` and ``action``.
    """
    root = osp.abspath(osp.expanduser(root))
    ddir = info.dataset_path(root)
    report = report if report is not None else {}
    report.setdefault("source", "-")
    status = EXIT_OK
    manifest = None
    if not split_only:
        order = sources_to_try(info, source)
        if _data_present(info, root):
            print(f"{info.name}: the data is already in {ddir}; skipping the archives")
            report["action"] = "already present"
        elif not order:
            if source in ("auto", "original") and info.manual:
                print(f"{info.name} cannot be downloaded automatically.\n{info.manual.replace('$DATA', root)}")
                status = EXIT_MANUAL
                report["action"] = "manual steps needed"
            else:
                raise DownloadError(_no_source_message(info, source, root))
        else:
            clash = [rel for rel in _markers(info) if osp.lexists(osp.join(ddir, rel))]
            if clash:
                raise DownloadError(
                    f"{info.name}: {', '.join(osp.join(ddir, rel) for rel in clash)} already exist(s) but the "
                    "dataset is incomplete; remove them to download again"
                )
            errors = []
            for src in order:
                try:
                    if src == "original":
                        installed, record = _install_original(info, root, keep_archives, timeout, fetcher)
                    else:
                        installed, record = _install_hub(info, root, keep_archives,
                                                         hub if hub is not None else HubClient(timeout=timeout))
                except DownloadError as e:
                    errors.append(f"from {src}: {e}")
                    if len(order) > 1:
                        print(f"{info.name}: fetching from {src} failed; {'trying the next source' if src != order[-1] else 'no source left'}")
                    continue
                manifest = (record, installed)
                write_manifest(ddir, record, installed)
                report["source"] = src if src == "original" else f"hub ({record['repo_id']})"
                report["action"] = "downloaded"
                break
            else:
                if info.manual:
                    print(f"{info.name}: automatic download failed. Manual steps:\n{info.manual.replace('$DATA', root)}")
                raise DownloadError("\n    ".join(errors))
        for file_id, fname in info.extra_files:
            dest = osp.join(ddir, fname)
            if not osp.exists(dest) and status == EXIT_OK:
                print(f"Fetching {fname}")
                _fetch_json_from_drive(file_id, dest, timeout, fetcher)
    if info.split_gdrive_id:
        fetch_split_file(info, root, timeout, fetcher)
    elif split_only:
        print(f"{info.name} has no split file to fetch ({info.notes.get('split', 'none is used')})")
    if split_only:
        report["action"] = "split file only"
    if manifest is not None:  # record the split / extra files fetched after the archives too
        record, installed = manifest
        later = [rel for rel in ([info.split_file] if info.split_file else []) + [f for _, f in info.extra_files]
                 if osp.isfile(osp.join(ddir, rel))]
        write_manifest(ddir, record, sorted(set(installed) | set(later)))
    if status == EXIT_OK and not split_only:
        from vlprompt.data.doctor import PROBLEM, check_dataset

        v = check_dataset(info, root)
        report["doctor"] = v.status
        print(f"{info.name}: doctor says {v.status}: {v.found or '-'}")
        for d in v.details:
            if v.status != "ok":
                print(f"  {d}")
        if v.status == PROBLEM:
            raise DownloadError(f"{info.name} is in place but the doctor finds a problem: {v.todo}")
        print(f"{info.name}: done. Check it again any time with: python -m vlprompt.data.doctor --root {root} "
              f"--dataset {info.yaml} [--verify] [--decode]")
    return status


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _print_list():
    print(f"{'DATASET':<20}  {'FOLDER':<22}  {'SOURCES (default order)':<24}  VERIFIED")
    for info in DATASETS.values():
        srcs = available_sources(info)
        if not srcs:
            how = "manual (steps printed)" + (" + split file" if info.split_gdrive_id else "")
        else:
            how = ", ".join(srcs)
        checks = []
        if info.archives:
            checks.append("MD5" if all(a.md5 for a in info.archives) else
                          ("MD5 (some archives)" if any(a.md5 for a in info.archives) else "original: none"))
        for hf in hub_catalog().files_for(info.name):
            checks.append(f"hub: {hf.verified_by()}")
        print(f"{info.name:<20}  {info.dataset_dir:<22}  {how:<24}  {'; '.join(checks) or '-'}")
    print("\nMirrors:")
    for m in hub_catalog().mirrors.values():
        state = f"pinned to {m.revision[:12]}" if m.revision else "not pinned"
        print(f"  {m.repo_id} ({m.repo_type} repository, {state})" + (f": NOT USED, {m.unverified}" if m.unverified else ""))


def _inspect_mirror(repo_id, repo_type, revision, hub):
    files = hub.list_files(repo_id, repo_type=repo_type, revision=revision)
    print(json.dumps({"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "files": files}, indent=1))
    return EXIT_OK


def _summary(rows, root):
    print("\nSummary:")
    w = max([len("DATASET")] + [len(r["name"]) for r in rows])
    print(f"  {'DATASET':<{w}}  {'SOURCE':<40}  RESULT")
    for r in rows:
        print(f"  {r['name']:<{w}}  {r.get('source', '-'):<40}  {r.get('action', '-')}")
    manual = [r for r in rows if r.get("manual")]
    if manual:
        print("\nNeeds a manual step:")
        for r in manual:
            print(f"\n{r['name']}:\n{r['manual'].replace('$DATA', root)}")


def main(argv=None, fetcher=fetch_url, hub=None):
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.data.download",
        description="Download a benchmark dataset and arrange it into the CoOp layout (see docs/DATASETS.md).",
    )
    parser.add_argument("names", nargs="*", help="dataset registry or yaml names, or 'all'")
    parser.add_argument("--root", help="the dataset root (DATASET.ROOT / train.py --root)")
    parser.add_argument("--all", action="store_true", help="every dataset that can be fetched; lists the manual steps")
    parser.add_argument("--source", choices=("auto", "original", "hub"), default="auto",
                        help="where to fetch from: auto = each dataset's default order (see --list)")
    parser.add_argument("--endpoint", help="Hugging Face Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--split-only", action="store_true", help="only fetch the split_zhou_*.json file")
    parser.add_argument("--keep-archives", action="store_true", help=f"keep the archives in ROOT/{DOWNLOADS_DIR}")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds")
    parser.add_argument("--list", action="store_true", help="list the datasets, their sources and what is verified")
    parser.add_argument("--inspect-mirror", metavar="REPO",
                        help="print a Hub repository's files with sizes and LFS sha256 (to record a mirror)")
    parser.add_argument("--repo-type", default="model", choices=("model", "dataset"), help="for --inspect-mirror")
    parser.add_argument("--revision", help="for --inspect-mirror")
    args = parser.parse_args(argv)

    try:
        if args.list:
            _print_list()
            return EXIT_OK
        if hub is None:
            hub = HubClient(endpoint=args.endpoint, timeout=args.timeout)
        if args.inspect_mirror:
            return _inspect_mirror(args.inspect_mirror, args.repo_type, args.revision, hub)
    except HubError as e:
        print(f"Error: {e}", file=sys.stderr)
        return EXIT_FAILED
    fetch_all = args.all or args.names == ["all"]
    if (not args.names and not args.all) or not args.root:
        parser.error("give dataset name(s) or --all, and --root (or --list)")
    from vlprompt.data.descriptions import download_descriptions, parse_download_name

    wanted = [parse_download_name(n) for n in args.names]
    if any(w is not None for w in wanted):  # class descriptions (vlprompt.data.descriptions)
        if not all(w is not None for w in wanted) or fetch_all:
            parser.error("fetch class descriptions in a command of their own (descriptions[:SOURCE] --root DATA)")
        sources = [s for w in wanted for s in w]
        try:
            done = download_descriptions(args.root, sources, fetcher=fetcher, timeout=args.timeout)
        except DownloadError as e:
            print(f"Error: {e}", file=sys.stderr)
            return EXIT_FAILED
        for src, files in done.items():
            print(f"{src}: {len(files)} description file(s) in place, verified")
        print(f"Check them any time with: python -m vlprompt.data.doctor --root {args.root} --dataset descriptions")
        return EXIT_OK
    try:
        infos = list(DATASETS.values()) if fetch_all else [get_info(n) for n in args.names]
    except KeyError as e:
        print(f"Error: {e.args[0]}", file=sys.stderr)
        return 2

    result = EXIT_OK
    rows = []
    for info in infos:
        row = {"name": info.name}
        rows.append(row)
        if fetch_all and not args.split_only and not sources_to_try(info, args.source) \
                and not _data_present(info, args.root):
            row.update(action="manual step needed (see below)", manual=info.manual or _no_source_message(
                info, args.source, args.root))
            if result == EXIT_OK:
                result = EXIT_MANUAL
            continue
        try:
            status = download_dataset(info, args.root, args.split_only, args.keep_archives, args.timeout, fetcher,
                                      source=args.source, hub=hub, report=row)
        except (DownloadError, HubError) as e:
            print(f"\n{info.name}: download failed: {e}", file=sys.stderr)
            if info.split_gdrive_id:
                print(f"  split file by hand: {gdrive_view_url(info.split_gdrive_id)} -> "
                      f"{info.split_path(args.root)}", file=sys.stderr)
            print(f"  see docs/DATASETS.md ({info.name}) for the manual steps", file=sys.stderr)
            row["action"] = f"FAILED: {str(e).splitlines()[0][:120]}"
            result = EXIT_FAILED
            continue
        if status == EXIT_MANUAL:
            row["manual"] = info.manual
            if result == EXIT_OK:
                result = EXIT_MANUAL
    if len(rows) > 1:
        _summary(rows, osp.abspath(osp.expanduser(args.root)))
    return result


if __name__ == "__main__":
    from vlprompt.errors import run_cli

    sys.exit(run_cli(main))
