"""One kind of run folder (:class:`Layout`): path segments with ``{field}`` placeholders, built and parsed
by the same description (standard library only). Each protocol declares its layouts
(vlprompt/protocol/protocols/); :mod:`vlprompt.protocol.tree` gathers them into the output tree.
"""
import os.path as osp
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .backbones import BACKBONE_LEVEL, backbone_folder, backbone_from_folder
from .datasets import KNOWN_DATASETS, XD_SOURCE, target_protocol

__all__ = ["Layout", "TreeError"]

_FIELD = {
    "dataset": r"[^/]+",
    "trainer": r"[^/]+",
    "config": r".+",
    "shots": r"\d+",
    "seed": r"\d+",
    "variant": r"nctx\d+_csc\w+_ctp\w+",
    "backbone": re.escape(BACKBONE_LEVEL) + r"[A-Za-z0-9%._+-]+(?:@[A-Za-z0-9%._+-]+)?",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class TreeError(ValueError):
    """A run that has no place in the output tree (unknown protocol/role, a field with a '/')."""


@dataclass(frozen=True)
class Layout:
    """One kind of run folder.

    ``protocol`` None: the protocol follows the dataset (:func:`target_protocol`). ``dataset_rule``:
    ``"source"`` (the dataset must be the transfer source), ``"not_source"`` (a known dataset other
    than the source; CoOp's own few-shot tree) or None. ``readonly`` layouts are only parsed.
    """

    name: str
    protocol: Optional[str]
    role: str
    segments: Tuple[str, ...]
    dataset_rule: Optional[str] = None
    readonly: bool = False

    @property
    def fields(self):
        return [f for s in self.segments for f in _PLACEHOLDER.findall(s)]

    def _regexes(self):
        out = []
        for s in self.segments:
            pos, rx = 0, ""
            for m in _PLACEHOLDER.finditer(s):
                rx += re.escape(s[pos:m.start()]) + f"(?P<{m.group(1)}>{_FIELD[m.group(1)]})"
                pos = m.end()
            out.append(re.compile(rx + re.escape(s[pos:]) + r"\Z"))
        return out

    def match(self, parts, source=XD_SOURCE):
        """The run description if the last path segments ``parts`` fit this layout, else None."""
        n = len(self.segments)
        if len(parts) < n:
            return None
        got = {}
        for rx, part in zip(self._regexes(), parts[-n:]):
            m = rx.match(part)
            if m is None:
                return None
            got.update(m.groupdict())
        d = got["dataset"] if "dataset" in got else source
        if self.dataset_rule == "source" and d != source:
            return None
        if self.dataset_rule == "not_source" and (d == source or d not in KNOWN_DATASETS):
            return None
        config = got["config"] + (f"/{got['variant']}" if got.get("variant") else "")
        backbone = backbone_from_folder(got["backbone"]) if got.get("backbone") else None
        return dict(protocol=self.protocol or target_protocol(d), role=self.role, dataset=d,
                    trainer=got["trainer"], config=config, shots=int(got["shots"]), seed=int(got["seed"]),
                    backbone=backbone)

    def with_backbone(self):
        """The same layout with the ``bb-<NAME>[@<TAG>]`` level right after the segment holding ``{config}``
        (a run on a backbone that the command line sets), named ``<name>_bb``."""
        at = next(i for i, s in enumerate(self.segments) if "{config}" in s) + 1
        return Layout(self.name + "_bb", self.protocol, self.role,
                      self.segments[:at] + ("{backbone}",) + self.segments[at:], self.dataset_rule, self.readonly)

    def build(self, **fields):
        if "{backbone}" in self.segments:
            fields = dict(fields, backbone=backbone_folder(fields["backbone"]))
        return osp.join(*(s.format(**fields) for s in self.segments))
