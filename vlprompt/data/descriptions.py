"""LLM-generated class descriptions as data: fetched, verified, checked by the doctor, loaded here.

Two published sources (docs/DATASETS.md, "Class descriptions"):

* ``coprompt``: CoPrompt's per-dataset GPT descriptions (Roy & Etemad, ICLR 2024;
  ``github.com/ShuvenduRoy/CoPrompt``, ``gpt_file/<name>_prompt.json``), used by the CoPrompt trainer.
* ``cupl``: CuPL's GPT-3 prompts (Pratt et al., ICCV 2023; ``github.com/sarahpratt/CuPL``,
  ``all_prompts/full_prompts/<name>_prompts_full.json`` and, for ImageNet,
  ``imagenet_prompts/CuPL_image_prompts.json``), the usual "CuPL" zero-shot ensembles.

Both formats are one JSON object ``{class name: [sentence, ...]}``. Each file is pinned to a commit of its
repository and verified by its **git blob SHA-1** (the checksum the pinned commit's tree records for it,
so a file is accepted only if it is byte for byte the one of that commit) and, where recorded, its size.

Layout under the data root (``DATASET.ROOT``)::

    DATA/descriptions/<source>/<file name as in the repository>
    DATA/descriptions/<source>/.vlprompt_manifest.json     (size + CRC-32 of every installed file)

Fetch with ``python -m vlprompt.data.download descriptions --root DATA`` (both sources; or
``descriptions:coprompt`` / ``descriptions:cupl``); check with ``python -m vlprompt.data.doctor --root DATA
--dataset descriptions``. Nothing is ever downloaded at run time: a missing file is one ``Error:`` line
naming the file and the command.

Class names are matched as CoPrompt does (``_`` read as a space); a name not found that way is looked up
case-insensitively (CuPL writes e.g. ``Sphynx`` where CoOp's OxfordPets has ``sphynx``).
"""
import hashlib
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from vlprompt.errors import InvalidValueError, UserError, UserFileError, UserPathNotFoundError

__all__ = [
    "DescriptionFile",
    "DescriptionSource",
    "SOURCES",
    "DescriptionsError",
    "descriptions_dir",
    "description_file",
    "description_path",
    "git_blob_sha1",
    "read_description_file",
    "load_descriptions",
    "descriptions_where",
    "register_descriptions",
    "user_descriptions_path",
    "class_descriptions",
    "download_descriptions",
    "check_descriptions",
    "DOWNLOAD_NAME",
]

DOWNLOAD_NAME = "descriptions"
FOLDER = "descriptions"


class DescriptionsError(UserError, RuntimeError):
    """A description file that is missing, malformed or lacks a class (the message names the file)."""


@dataclass(frozen=True)
class DescriptionFile:
    path: str  # path inside the repository
    blob_sha1: str  # git blob SHA-1 at the pinned commit
    size: Optional[int] = None  # bytes, where recorded

    @property
    def filename(self):
        return osp.basename(self.path)


@dataclass(frozen=True)
class DescriptionSource:
    name: str
    repo: str  # owner/name on GitHub
    commit: str
    cite: str
    files: Dict[str, DescriptionFile] = field(default_factory=dict)  # DATASET.NAME -> file
    equal_counts: bool = False  # the consumer stacks one tensor per class: every class needs as many sentences

    def url(self, f):
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{f.path}"


def _files(prefix, suffix, table):
    return {ds: DescriptionFile(f"{prefix}{stem}{suffix}", sha, size) for ds, (stem, sha, size) in table.items()}


_COPROMPT_IMAGENET = "86ab87f6934a4be4d628eae53c30b15dbb683f34"  # the five ImageNet-family files are one blob
_CUPL_FULL = "all_prompts/full_prompts/"

SOURCES = {
    "coprompt": DescriptionSource(
        name="coprompt",
        repo="ShuvenduRoy/CoPrompt",
        commit="a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c",
        cite="Roy & Etemad, Consistency-guided Prompt Learning for Vision-Language Models, ICLR 2024",
        equal_counts=True,
        files=_files("gpt_file/", "_prompt.json", {
            "Caltech101": ("caltech", "1990ab4ab8bd416d4e54a5bd53b11bf7bba92f99", 421183),
            "DescribableTextures": ("dtd", "8d66432094ad7a2ed104d0e722a99708cd8bc29d", 197272),
            "EuroSAT": ("eurosat", "2689ca7893edaacc0ed863561213a4d3722a0481", 15439),
            "FGVCAircraft": ("fgvc", "a33598845341654c41c585ba6fe17a3ac74791b6", 845966),
            "Food101": ("food101", "cbb438d59371af676a6d4342ef76d5f110e53b6d", 685866),
            "ImageNet": ("imagenet", _COPROMPT_IMAGENET, None),
            "ImageNetA": ("imagenet_a", _COPROMPT_IMAGENET, None),
            "ImageNetR": ("imagenet_r", _COPROMPT_IMAGENET, None),
            "ImageNetSketch": ("imagenet_sketch", _COPROMPT_IMAGENET, None),
            "ImageNetV2": ("imagenetv2", _COPROMPT_IMAGENET, None),
            "OxfordFlowers": ("oxford_flowers", "9a5e5670d2f507f9ec513b0d73777a448bb8d334", 200284),
            "OxfordPets": ("oxford_pets", "725ce24eebc21a26e646417150c4ca8d81029ac1", 49571),
            "StanfordCars": ("stanford_cars", "eddd019a944c0592f88eade8aecd20b179a107e8", 905180),
            "SUN397": ("sun397", "f314ba3d293e6ebddb1ee910443a9b315eddcd91", 1890060),
            "UCF101": ("ucf101", "58f1bd7e61d27fb216036a92154768b8c940460d", 697778),
        }),
    ),
    "cupl": DescriptionSource(
        name="cupl",
        repo="sarahpratt/CuPL",
        commit="719619c829792ff8f37298266e941b7f077c7f5c",
        cite="Pratt et al., What does a platypus look like? Generating customized prompts for zero-shot "
             "image classification, ICCV 2023",
        files=dict(
            _files(_CUPL_FULL, "_prompts_full.json", {
                "Caltech101": ("cal", "8dd65dc77f960376c0f8ebced94c8d1d6ff7a898", 268534),
                "DescribableTextures": ("texture", "fec0ef19f0a3922fafd35971789ba362a3cf334e", 252049),
                "FGVCAircraft": ("airplane", "030f9aed70989a19dfa5280584d1d8ec667549dc", 218712),
                "Food101": ("food", "9de2619fc7db276ba53e715389745168bca21c64", 324576),
                "OxfordFlowers": ("flower", "cc21e4693bd0c7007e2485b5ded28756a0f2e780", 197579),
                "OxfordPets": ("pets", "0d9d1af64fa0afddeecdead5d65922fb17a2f3e7", 67662),
                "StanfordCars": ("cars", "9ad6927eca9753484824061d60b61df86e8d5fd8", 1850176),
                "SUN397": ("sun", "5aef33b09d222f0ee43121b977cfc88d839d86c8", 1136873),
                "UCF101": ("ucf", "d85366112b9c4976195533585d46c60fccc3244a", 576770),
            }),
            # CuPL's ImageNet prompts (the file classify_imagenet.py reads); the variants use ImageNet's
            **{ds: DescriptionFile("imagenet_prompts/CuPL_image_prompts.json",
                                   "b5796c20e12c7448a9d78147fc9869b421d908d7", None)
               for ds in ("ImageNet", "ImageNetA", "ImageNetR", "ImageNetSketch", "ImageNetV2")},
        ),
    ),
}


def _source(name):
    key = str(name).strip().lower()
    if key not in SOURCES:
        raise InvalidValueError(f'unknown class-description source "{name}"; choose one of {sorted(SOURCES)}')
    return SOURCES[key]


def download_command(root, source=None):
    what = DOWNLOAD_NAME if source is None else f"{DOWNLOAD_NAME}:{source}"
    return f"python -m vlprompt.data.download {what} --root {root or 'DATA'}"


def descriptions_dir(root, source):
    return osp.join(osp.abspath(osp.expanduser(root or ".")), FOLDER, _source(source).name)


def description_file(source, dataset_name):
    """The pinned :class:`DescriptionFile` of ``dataset_name`` in ``source``; a clear error if it has none."""
    src = _source(source)
    f = src.files.get(dataset_name)
    if f is None:
        others = [s for s, v in SOURCES.items() if dataset_name in v.files and s != src.name]
        hint = f" ({' or '.join(others)} has one)" if others else ""
        raise DescriptionsError(
            f'the "{src.name}" class descriptions ({src.repo}) have no file for dataset {dataset_name}{hint}; '
            f"datasets covered: {', '.join(sorted(src.files))}"
        )
    return f


def description_path(root, source, dataset_name):
    return osp.join(descriptions_dir(root, source), description_file(source, dataset_name).filename)


def git_blob_sha1(path_or_bytes):
    """Git's blob SHA-1 of a file (``sha1(b"blob <size>\\0" + content)``)."""
    data = path_or_bytes
    if not isinstance(data, (bytes, bytearray)):
        with open(path_or_bytes, "rb") as fh:
            data = fh.read()
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def read_description_file(path):
    """``{class name: [sentences]}`` from one description file; :class:`DescriptionsError` naming the
    file if it is not a JSON object of non-empty lists of strings."""
    try:
        with open(path, encoding="utf-8") as fh:
            table = json.load(fh)
    except ValueError as e:
        raise DescriptionsError(f"{path} is not valid JSON ({e}); delete it and download it again") from None
    except OSError as e:
        raise UserFileError(f"cannot read {path}: {e}") from None
    if not isinstance(table, dict) or not table:
        raise DescriptionsError(f"{path} must hold a non-empty JSON object {{class name: [sentences]}}")
    for name, sentences in table.items():
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
            raise DescriptionsError(f'{path}: class "{name}" must map to a non-empty list of sentences')
    return table


_BUILT_IN = {}  # DATASET.NAME -> {class name: [sentences]} contributed by code (the toy world)


def register_descriptions(dataset_name, table):
    """Class descriptions that a module generates itself (the toy world's, :mod:`vlprompt.toy.descriptions`);
    they are used for ``dataset_name`` whatever the source, since no published file covers it."""
    for name, sentences in table.items():
        if not isinstance(sentences, (list, tuple)) or not sentences:
            raise InvalidValueError(f'descriptions of "{name}" for {dataset_name} must be a non-empty list')
    _BUILT_IN[dataset_name] = {k: list(v) for k, v in table.items()}


def user_descriptions_path(root, dataset_name, folder=""):
    """Where a dataset no published source covers (a user's ImageFolder, a new dataset) takes its class
    descriptions from: ``DATA/descriptions/user/<DATASET.FOLDER or DATASET.NAME>.json``, written by the user
    in the same format (``{class name: [sentences]}``)."""
    key = str(folder).strip("/").replace("/", "_") if folder else str(dataset_name)
    return osp.join(osp.abspath(osp.expanduser(root or ".")), FOLDER, "user", f"{key}.json")


def covers(source, dataset_name):
    return dataset_name in _source(source).files


def load_descriptions(root, source, dataset_name, folder=""):
    """The description table of ``dataset_name`` from ``source`` under the data root ``root``.

    Datasets the source does not cover: the toy world's built-in descriptions, else the user's file
    (:func:`user_descriptions_path`). A missing file raises one clear error naming the file and the
    download command (or, for a user's file, the format to write)."""
    if dataset_name in _BUILT_IN:
        return dict(_BUILT_IN[dataset_name])
    if not covers(source, dataset_name):
        path = user_descriptions_path(root, dataset_name, folder)
        if not osp.isfile(path):
            raise UserPathNotFoundError(
                f"class descriptions file {path} not found: the {source} descriptions do not cover dataset "
                f"{dataset_name}; write one there ({{class name: [sentences]}}, docs/DATASETS.md)"
            )
        return read_description_file(path)
    path = description_path(root, source, dataset_name)
    if not osp.isfile(path):
        raise UserPathNotFoundError(
            f"class descriptions file {path} not found (the {source} descriptions of {dataset_name}); "
            f"fetch them with: {download_command(root, _source(source).name)}"
        )
    return read_description_file(path)


def descriptions_where(root, source, dataset_name, folder=""):
    """The file (or "built-in") :func:`load_descriptions` reads, for messages."""
    if dataset_name in _BUILT_IN:
        return f"the built-in descriptions of {dataset_name}"
    if not covers(source, dataset_name):
        return user_descriptions_path(root, dataset_name, folder)
    return description_path(root, source, dataset_name)


def _lookup(table):
    exact = dict(table)
    folded = {}
    for k in table:
        folded.setdefault(k.replace("_", " ").strip().lower(), k)
    return exact, folded


def class_descriptions(table, classnames, where="the description file"):
    """The sentences of each class of ``classnames`` (a list of lists, in class order).

    A class is found under its name with ``_`` read as a space (CoPrompt's rule), else case-insensitively;
    :class:`DescriptionsError` lists the classes not found."""
    exact, folded = _lookup(table)
    out, missing = [], []
    for c in classnames:
        name = c.replace("_", " ")
        key = name if name in exact else folded.get(name.strip().lower())
        if key is None:
            missing.append(c)
            continue
        out.append(list(exact[key]))
    if missing:
        shown = ", ".join(f'"{m}"' for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DescriptionsError(f"{where} has no descriptions for {len(missing)} class(es): {shown}")
    return out


# ------------------------------------------------------------------------------------------------
# Download
# ------------------------------------------------------------------------------------------------
def parse_download_name(name):
    """``descriptions`` -> every source; ``descriptions:cupl`` -> that one; anything else -> None."""
    key = str(name).strip().lower()
    if key == DOWNLOAD_NAME:
        return list(SOURCES)
    if key.startswith(DOWNLOAD_NAME + ":"):
        return [_source(key.split(":", 1)[1]).name]
    return None


def _verify_download(path, f, url):
    from vlprompt.data.fetch import DownloadError

    size = os.path.getsize(path)
    if f.size is not None and size != f.size:
        raise DownloadError(f"{url}: {size:,} bytes, expected {f.size:,} (the file at the pinned commit)")
    got = git_blob_sha1(path)
    if got != f.blob_sha1:
        raise DownloadError(f"{url}: git blob SHA-1 {got}, expected {f.blob_sha1} (the file at the pinned commit)")
    read_description_file(path)


def download_descriptions(root, sources=None, fetcher=None, timeout=15.0, quiet=False):
    """Fetch every file of ``sources`` (default all) into ``DATA/descriptions/<source>/``, verified.

    Each file is downloaded to a temporary name, checked (size, git blob SHA-1 of the pinned commit, the
    format) and only then renamed into place; files already present and matching are kept. An install
    manifest records what was installed. Returns ``{source: [installed file names]}``; raises
    :class:`vlprompt.data.fetch.DownloadError` (listing every failed file) when a file could not be had.
    """
    from vlprompt.data.fetch import DownloadError, fetch_url
    from vlprompt.data.integrity import write_manifest

    fetcher = fetcher or fetch_url
    out, errors = {}, []
    for name in sources or list(SOURCES):
        src = _source(name)
        ddir = descriptions_dir(root, src.name)
        os.makedirs(ddir, exist_ok=True)
        unique = {}
        for f in src.files.values():
            unique.setdefault(f.filename, f)
        installed = []
        for fname, f in sorted(unique.items()):
            dest = osp.join(ddir, fname)
            url = src.url(f)
            if osp.isfile(dest):
                try:
                    _verify_download(dest, f, dest)
                    installed.append(fname)
                    continue
                except (DownloadError, DescriptionsError):
                    pass  # not the pinned file: fetched again below
            tmp = dest + ".download"
            if not quiet:
                print(f"Fetching {url}")
            try:
                fetcher(url, tmp, md5=None, timeout=timeout)
                _verify_download(tmp, f, url)
            except (DownloadError, DescriptionsError) as e:
                errors.append(f"{src.name}/{fname}: {e}")
                if osp.exists(tmp):
                    os.remove(tmp)
                continue
            os.replace(tmp, dest)
            installed.append(fname)
        for leftover in os.listdir(ddir):
            if leftover.endswith((".download", ".download.part")):
                os.remove(osp.join(ddir, leftover))
        if installed:
            write_manifest(ddir, {"source": src.name, "repo": src.repo, "commit": src.commit,
                                  "checksum": "git blob SHA-1 of the pinned commit"}, installed)
        out[src.name] = installed
    if errors:
        raise DownloadError("class descriptions not fetched:\n    " + "\n    ".join(errors))
    return out


# ------------------------------------------------------------------------------------------------
# Doctor
# ------------------------------------------------------------------------------------------------
def _split_classnames(info, root):
    """Class names of an installed dataset from its split file (None when it cannot be read cheaply)."""
    path = info.split_path(root) if info is not None else None
    if not path or not osp.isfile(path):
        return None
    try:
        with open(path) as fh:
            split = json.load(fh)
        names = {}
        for part in split.values():
            for item in part:
                names[int(item[1])] = item[2]
        return [names[k] for k in sorted(names)]
    except (ValueError, OSError, KeyError, IndexError, TypeError):
        return None


def check_descriptions(root, sources=None):
    """Doctor rows ``[(status, source/file, message)]`` for the description files under ``root``.

    Per file: present; the format; the git blob SHA-1 of the pinned commit; classes (count against the
    catalog's class count; every class of the installed dataset's split file present); sentences per class
    (``equal_counts`` sources: the same number for every class, as their consumer requires)."""
    from vlprompt.data.catalog import DATASETS

    rows = []
    for name in sources or list(SOURCES):
        src = _source(name)
        by_file = {}
        for ds, f in src.files.items():
            by_file.setdefault(f.filename, (f, []))[1].append(ds)
        for fname, (f, datasets) in sorted(by_file.items()):
            path = osp.join(descriptions_dir(root, src.name), fname)
            label = f"{src.name}/{fname}"
            if not osp.isfile(path):
                rows.append(("missing", label, f"not found; fetch with: {download_command(root, src.name)}"))
                continue
            try:
                table = read_description_file(path)
            except UserError as e:
                rows.append(("problem", label, str(e)))
                continue
            status, notes = "ok", []
            if git_blob_sha1(path) != f.blob_sha1:
                status = "warn"
                notes.append(f"not the file of {src.repo}@{src.commit[:12]} (git blob SHA-1 differs)")
            counts = sorted({len(v) for v in table.values()})
            notes.insert(0, f"{len(table)} classes, {counts[0]}" + (f"-{counts[-1]}" if len(counts) > 1 else "")
                         + " sentences per class")
            if src.equal_counts and len(counts) > 1:
                status = "problem"
                notes.append("classes have different numbers of sentences (CoPrompt stacks one tensor per class)")
            for ds in datasets:
                info = DATASETS.get(ds)
                if info is None:
                    continue
                if len(table) < info.num_classes:
                    status = "problem"
                    notes.append(f"{ds} has {info.num_classes} classes, the file {len(table)}")
                names = _split_classnames(info, root)
                if names is not None:
                    try:
                        class_descriptions(table, names, where=label)
                        notes.append(f"every class of the installed {ds} present")
                    except DescriptionsError as e:
                        status = "problem"
                        notes.append(str(e))
            rows.append((status, label, "; ".join(notes)))
    return rows
