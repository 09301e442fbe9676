"""Community mirrors of the benchmark datasets on the Hugging Face Hub.

What each mirror holds is data, in ``hub_mirrors.json`` next to this file (:func:`load_catalog`):
the repository and the revision it is pinned to, which archive holds which dataset, the archive's
layout, and its size and sha256 where they were read (with where they were read). This module reads
that record and fetches the archives (:class:`HubClient`); arranging them into the CoOp layout is the
download helper's job (``vlprompt.data.download``).

Transport. ``huggingface_hub`` resolves the file's URL (``HF_ENDPOINT`` or ``--endpoint``), sends the
token (``HF_TOKEN``) and reads the file's metadata from the Hub (size and the git-LFS sha256 the Hub
publishes, after its redirects); ``HF_HUB_OFFLINE=1`` is honoured (nothing is contacted and only
already downloaded, already verified files are used). The bytes are streamed here, with HTTP range
requests, into ``<file>.part``: huggingface_hub 2.4 deletes its partial file when a download fails
(``file_download._download_to_tmp_and_move``) and resumes only within one call, so a download
interrupted by a crash, a lost connection or Ctrl-C would start from zero there; here the next run
resumes where the last one stopped. Every file is checked against its recorded size and
sha256, or, where none is recorded, against what the Hub publishes for the pinned revision; a
mismatch removes the file and fails with both values.
"""
import http.client
import json
import os
import os.path as osp
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from vlprompt.data.fetch import _reason
from vlprompt.data.integrity import IntegrityError, check_file
from vlprompt.errors import UserError

__all__ = [
    "HubError",
    "Mirror",
    "HubFile",
    "HubCatalog",
    "load_catalog",
    "HubClient",
    "CATALOG_FILE",
    "SOURCES",
]

CATALOG_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "hub_mirrors.json")
SOURCES = ("original", "hub")
LAYOUTS = ("coop_folder",)
_SIDE = ".vlprompt.json"  # next to a completed download: what it was checked against


class HubError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class Mirror:
    repo_id: str
    repo_type: str
    revision: Optional[str]
    page: str = ""
    maintainer: str = ""
    read: str = ""
    unverified: Optional[str] = None  # why nothing is fetched from it (None: its records were read)
    notes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class HubFile:
    dataset: str
    mirror: Mirror
    filename: str
    layout: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    checksum_source: Optional[str] = None
    approx_size: Optional[str] = None
    members: Dict[str, Dict[str, str]] = field(default_factory=dict)

    @property
    def label(self):
        return f"{self.mirror.repo_id}/{self.filename}"

    def verified_by(self):
        """What the download is checked against, in words (for --list and the docs)."""
        if self.sha256:
            return "size + sha256 recorded"
        return "size + sha256 the Hub publishes"


@dataclass
class HubCatalog:
    mirrors: Dict[str, Mirror]
    files: List[HubFile]
    source_order: Dict[str, List[str]]
    reasons: Dict[str, str]

    def files_for(self, dataset):
        """The fetchable records for ``dataset`` (mirrors whose file list was read)."""
        return [f for f in self.files if f.dataset == dataset and f.mirror.unverified is None]

    def order_for(self, dataset):
        return list(self.source_order.get(dataset, self.source_order.get("default", list(SOURCES))))

    def reason_for(self, dataset):
        return self.reasons.get(dataset, self.reasons.get("default", ""))


def load_catalog(path=CATALOG_FILE, known_datasets=None):
    """Parse and check ``hub_mirrors.json``; a malformed record raises :class:`HubError` naming it."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise HubError(f"cannot read the mirror catalog {path}: {e}")

    def bad(msg):
        return HubError(f"{path}: {msg}")

    mirrors = {}
    for repo_id, m in raw.get("mirrors", {}).items():
        if m.get("repo_type") not in ("model", "dataset"):
            raise bad(f'mirror {repo_id}: repo_type must be "model" or "dataset"')
        if m.get("unverified") is None and not m.get("revision"):
            raise bad(f"mirror {repo_id}: a mirror that is fetched from must be pinned to a revision")
        mirrors[repo_id] = Mirror(repo_id, m["repo_type"], m.get("revision"), m.get("page", ""),
                                  m.get("maintainer", ""), m.get("read", ""), m.get("unverified"),
                                  tuple(m.get("notes", ())))
    files = []
    for i, rec in enumerate(raw.get("files", [])):
        where = f"files[{i}] ({rec.get('filename')})"
        if rec.get("mirror") not in mirrors:
            raise bad(f"{where}: unknown mirror {rec.get('mirror')!r}")
        if known_datasets is not None and rec.get("dataset") not in known_datasets:
            raise bad(f"{where}: unknown dataset {rec.get('dataset')!r}")
        if rec.get("layout") not in LAYOUTS:
            raise bad(f"{where}: unknown layout {rec.get('layout')!r} (known: {', '.join(LAYOUTS)})")
        sha = rec.get("sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise bad(f"{where}: sha256 must be 64 lower-case hex digits")
        if sha is not None and not rec.get("checksum_source"):
            raise bad(f"{where}: a recorded sha256 must say where it was read (checksum_source)")
        files.append(HubFile(rec["dataset"], mirrors[rec["mirror"]], rec["filename"], rec["layout"],
                             rec.get("size"), sha, rec.get("checksum_source"), rec.get("approx_size"),
                             dict(rec.get("members", {}))))
    order = {k: list(v) for k, v in raw.get("source_order", {}).items()}
    for k, v in order.items():
        if any(s not in SOURCES for s in v):
            raise bad(f"source_order[{k}]: sources are {', '.join(SOURCES)}")
    return HubCatalog(mirrors, files, order, dict(raw.get("source_order_reasons", {})))


# ------------------------------------------------------------------------------------------------
# Transport
# ------------------------------------------------------------------------------------------------
def _hf():
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    return huggingface_hub, constants, build_hf_headers


class HubClient:
    """Fetch recorded files from Hub mirrors, resumably and verified.

    ``endpoint``: the Hub to talk to (default: ``HF_ENDPOINT`` or https://huggingface.co);
    ``token``: as huggingface_hub takes it (default: ``HF_TOKEN`` / the saved login).
    """

    def __init__(self, endpoint=None, token=None, timeout=15.0, quiet=False):
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.token = token
        self.timeout = timeout
        self.quiet = quiet

    # -- metadata ---------------------------------------------------------------------------------
    def offline(self):
        constants = _hf()[1]
        check = getattr(constants, "is_offline_mode", None)
        return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)

    def _endpoint(self):
        return self.endpoint or _hf()[1].ENDPOINT

    def metadata(self, hf):
        """``(url to stream, size, published sha256 or None, commit)`` of a recorded file."""
        hub, _, _ = _hf()
        m = hf.mirror
        url = hub.hf_hub_url(m.repo_id, hf.filename, repo_type=m.repo_type, revision=m.revision,
                             endpoint=self.endpoint)
        try:
            meta = hub.get_hf_file_metadata(url, token=self.token, timeout=self.timeout, endpoint=self.endpoint)
        except Exception as e:  # httpx / HfHubHTTPError / OfflineModeIsEnabled: one clear message
            raise HubError(f"cannot read {hf.label} at revision {m.revision} from {self._endpoint()}: "
                           f"{_reason(e)}") from e
        etag = (meta.etag or "").strip('"').lower()
        published = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
        return meta.location or url, meta.size, published, meta.commit_hash

    def list_files(self, repo_id, repo_type="model", revision=None):
        """Every file of a repository with its size and LFS sha256 (for ``--inspect-mirror``)."""
        hub, _, _ = _hf()
        api = hub.HfApi(endpoint=self.endpoint, token=self.token)
        try:
            entries = list(api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=repo_type))
        except Exception as e:
            raise HubError(f"cannot list {repo_type} repository {repo_id} on {self._endpoint()}: {_reason(e)}") from e
        out = []
        for e in entries:
            if not hasattr(e, "size"):
                continue  # a folder
            lfs = getattr(e, "lfs", None)
            sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)
            out.append({"path": e.path, "size": e.size, "sha256": sha})
        return sorted(out, key=lambda r: r["path"])

    # -- download ---------------------------------------------------------------------------------
    def download(self, hf, dest_dir):
        """Fetch ``hf`` into ``dest_dir`` (resuming a ``.part`` left by an earlier run); return its path.

        Raises :class:`HubError` with a clear message; a file that fails its check is removed.
        """
        m = hf.mirror
        if m.unverified is not None:
            raise HubError(f"{m.repo_id}: {m.unverified}")
        dest = osp.join(dest_dir, hf.filename)
        part = dest + ".part"
        side = dest + _SIDE
        if self.offline():
            return self._offline_copy(hf, dest, side)
        url, pub_size, pub_sha, commit = self.metadata(hf)
        if hf.sha256 and pub_sha and pub_sha != hf.sha256:
            raise HubError(
                f"{hf.label}: the Hub publishes sha256 {pub_sha} at revision {m.revision}, the catalog "
                f"records {hf.sha256} ({hf.checksum_source}); the record or the mirror is wrong, nothing was downloaded")
        if hf.size is not None and pub_size is not None and pub_size != hf.size:
            raise HubError(f"{hf.label}: the Hub publishes {pub_size:,} bytes, the catalog records {hf.size:,}")
        sha = hf.sha256 or pub_sha
        size = hf.size if hf.size is not None else pub_size
        checked = "the recorded sha256" if hf.sha256 else ("the sha256 the Hub publishes" if pub_sha else None)
        if osp.isfile(dest) and self._side_ok(side, hf, sha, size):
            if not self.quiet:
                print(f"Using the already downloaded, verified {dest}")
            return dest
        if osp.isfile(dest):  # complete but not recorded as checked: check it (again) from the start
            os.replace(dest, part)
        os.makedirs(dest_dir, exist_ok=True)
        self._stream(url, part, size, hf)
        try:
            check_file(part, size=size, sha256=sha, what=f"{hf.label} (downloaded)")
        except IntegrityError as e:
            os.remove(part)
            raise HubError(f"checksum failure: {e}; the file was removed, run the command again to "
                           "download it afresh") from e
        os.replace(part, dest)
        with open(side + ".tmp", "w") as f:
            json.dump({"repo_id": m.repo_id, "revision": m.revision, "commit": commit, "filename": hf.filename,
                       "size": os.path.getsize(dest), "sha256": sha, "checked_against": checked}, f, indent=1)
        os.replace(side + ".tmp", side)
        if checked is None and not self.quiet:
            print(f"  note: {hf.label} has no sha256 on record and the Hub published none; only its size was checked")
        return dest

    def _side_ok(self, side, hf, sha, size):
        try:
            with open(side) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return False
        return (rec.get("revision") == hf.mirror.revision and rec.get("sha256") == sha
                and (size is None or rec.get("size") == size) and os.path.getsize(side[: -len(_SIDE)]) == rec.get("size"))

    def _offline_copy(self, hf, dest, side):
        if osp.isfile(dest):
            try:
                with open(side) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                rec = {}
            if rec.get("revision") == hf.mirror.revision and (hf.sha256 is None or rec.get("sha256") == hf.sha256) \
                    and rec.get("size") == os.path.getsize(dest):
                return dest
        raise HubError(f"offline mode (HF_HUB_OFFLINE is set) and {hf.label} has not been downloaded and verified "
                       f"into {osp.dirname(dest)} yet; unset HF_HUB_OFFLINE to download it")

    def _stream(self, url, part, size, hf):
        _, _, build_hf_headers = _hf()
        done = os.path.getsize(part) if osp.isfile(part) else 0
        if size is not None and done > size:
            os.remove(part)
            done = 0
        if size is not None and done == size:
            return
        headers = dict(build_hf_headers(token=self.token))
        headers["Accept-Encoding"] = "identity"
        if urllib.parse.urlparse(url).netloc != urllib.parse.urlparse(self._endpoint()).netloc:
            # a signed CDN / storage URL: the Hub token must not leave the Hub (as huggingface_hub does)
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if done:
            headers["Range"] = f"bytes={done}-"
            if not self.quiet:
                print(f"  resuming {hf.filename} at {done:,} of {size:,} bytes" if size else
                      f"  resuming {hf.filename} at {done:,} bytes")
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and done:  # our .part is not a prefix of the file any more
                os.remove(part)
                raise HubError(f"{hf.label}: the server refused to resume ({e.code}); the partial file was "
                               "removed, run the command again") from e
            raise HubError(f"{hf.label}: HTTP {e.code} ({e.reason}) from {url.split('?')[0]}") from e
        except (urllib.error.URLError, OSError) as e:
            raise HubError(f"cannot reach {self._endpoint()}: {_reason(e)}. Offline or behind a proxy? "
                           "(set https_proxy, or HF_ENDPOINT for a Hub mirror)") from e
        mode = "ab"
        if done and getattr(response, "status", 200) != 206:
            mode, done = "wb", 0  # the server ignored the range: start again
        got, last = done, time.time()
        try:
            with response, open(part, mode) as out:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (socket.timeout, TimeoutError, OSError, ValueError, http.client.HTTPException) as e:
                        raise HubError(f"{hf.label}: download interrupted at {got:,} bytes ({_reason(e)}); "
                                       f"run the same command again to resume from {part}") from e
                    if not block:
                        break
                    out.write(block)
                    got += len(block)
                    now = time.time()
                    if not self.quiet and now - last > 2.0:
                        last = now
                        total = f" / {size / 1e6:,.1f} MB" if size else " MB"
                        print(f"  {hf.filename}: {got / 1e6:,.1f}{total}", flush=True)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {got:,} bytes of {hf.filename} kept in {part}; run the same command to resume")
            raise
        if size is not None and got < size:
            raise HubError(f"{hf.label}: the connection closed at {got:,} of {size:,} bytes; run the same "
                           f"command again to resume from {part}")

    @staticmethod
    def member_checks(hf):
        """``[(relative path, sha256, source)]`` of archive members whose checksum is on record."""
        return [(rel, rec["sha256"], rec.get("source", "")) for rel, rec in sorted(hf.members.items())]


def sources_with_data(info, catalog):
    """The sources that can fetch ``info``'s data (``original`` if it has archives, ``hub`` if a recorded
    mirror holds it), in the catalog's documented default order for that dataset."""
    have = {"original": bool(info.archives), "hub": bool(catalog.files_for(info.name))}
    return [s for s in catalog.order_for(info.name) if have.get(s)]
