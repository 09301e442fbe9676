"""Fetching one file over HTTP(S) (or ``file://``): resumable, verified, never half-written.

The lowest layer of the downloads: :mod:`vlprompt.data.download` (datasets, split files) and
:mod:`vlprompt.data.descriptions` (class-description files) both fetch through :func:`fetch_url` and report
with :class:`DownloadError` (re-exported by :mod:`vlprompt.data.download`, where it has always been).
"""
import hashlib
import http.client
import os
import os.path as osp
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from vlprompt.data.integrity import file_digest
from vlprompt.errors import UserError

__all__ = ["DownloadError", "fetch_url", "USER_AGENT", "DEFAULT_TIMEOUT"]

USER_AGENT = "vlprompt-dataset-downloader"
DEFAULT_TIMEOUT = 15.0


class DownloadError(UserError, RuntimeError):
    pass


def _md5(path):
    return file_digest(path, "md5")


def _reason(err):
    reason = getattr(err, "reason", err)
    if isinstance(reason, socket.gaierror):
        return f"host name lookup failed ({reason})"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    return str(reason) or type(reason).__name__


def fetch_url(url, dest, md5=None, timeout=DEFAULT_TIMEOUT, quiet=False, resume=True):
    """Download ``url`` to ``dest`` (via ``dest.part``, renamed when complete and verified).

    Raises :class:`DownloadError` with a clear message when the host cannot be reached (offline),
    the server answers with an error or a web page where a file was expected, or the MD5 differs.
    With ``resume`` (http/https), a ``dest.part`` left by an interrupted earlier call is continued
    with an HTTP range request (from the start if the server ignores ranges); an interruption keeps
    the partial file for the next call, a wrong MD5 or a web page removes it.
    """
    host = urllib.parse.urlparse(url).netloc
    part = dest + ".part"
    ranged = resume and url.startswith(("http://", "https://")) and osp.isfile(part)
    offset = os.path.getsize(part) if ranged else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file is not a prefix of this file: start again
            os.remove(part)
            return fetch_url(url, dest, md5=md5, timeout=timeout, quiet=quiet, resume=False)
        raise DownloadError(f"{host} answered HTTP {e.code} ({e.reason}) for {url}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(
            f"cannot reach {host}: {_reason(e)}. Is this machine offline or behind a proxy? "
            f"(set https_proxy / http_proxy, or download {url} by hand)"
        ) from e
    if offset and getattr(response, "status", 200) != 206:
        offset = 0  # the server ignored the range
    h = hashlib.md5()
    if offset:
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if not quiet:
            print(f"  resuming {osp.basename(dest)} at {offset / 1e6:,.1f} MB")
    os.makedirs(osp.dirname(osp.abspath(dest)), exist_ok=True)
    keep = False
    try:
        with response, open(part, "ab" if offset else "wb") as out:
            ctype = response.headers.get("Content-Type", "") or ""
            if ctype.startswith("text/html") and not url.endswith((".html", ".htm")):
                raise DownloadError(
                    f"{host} returned a web page instead of the file {url} (a login/quota/confirmation "
                    "page, or the link moved)"
                )
            total = int(response.headers.get("Content-Length") or 0) + offset
            done, last = offset, 0.0
            while True:
                try:
                    block = response.read(1 << 20)
                except (socket.timeout, TimeoutError, OSError, http.client.HTTPException) as e:
                    keep = resume
                    again = "; run the same command again to resume" if resume else ""
                    raise DownloadError(f"download of {url} stalled at {done / 1e6:,.1f} MB: {_reason(e)}{again}") from e
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
            if total > offset and done < total:
                keep = resume
                raise DownloadError(f"download of {url} stopped at {done:,} of {total:,} bytes"
                                    + ("; run the same command again to resume" if resume else ""))
    except KeyboardInterrupt:
        if not resume and osp.exists(part):
            os.remove(part)
        raise
    except BaseException:
        if osp.exists(part) and not keep:
            os.remove(part)
        raise
    if md5 is not None and h.hexdigest() != md5:
        os.remove(part)
        raise DownloadError(f"MD5 mismatch for {url}: got {h.hexdigest()}, expected {md5}")
    os.replace(part, dest)
    return dest
