"""Plug-ins, one module per plug-in, registered in ``PLUGIN_REGISTRY`` (vlprompt/engine/plugins.py).

Importing this package imports every module in this folder, so a new ``trainers/plugins/<name>.py``
registers its plug-in and its config node without editing this file. A plug-in is added to a host trainer
with the spelling ``Host+Plugin`` (e.g. ``--trainer CoOp+DePT``); docs/EXTENDING.md, "Add a plug-in".
"""
from vlprompt.utils import import_submodules

__all__ = import_submodules(__name__, __path__, kind="plug-in module")
