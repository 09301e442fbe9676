"""Test-time procedures, one module per procedure, registered in ``TTA_REGISTRY`` (vlprompt/tta/base.py).

Importing this package imports every module in this folder, so a new ``trainers/tta/<name>.py`` registers its
procedure and its ``cfg.TTA.<NODE>`` keys without editing this file. A procedure wraps a finished model:
``python train.py --eval-only --trainer CoOp --model-dir RUN ... TTA.METHOD TPT`` (docs/METHODS.md,
"Test-time adaptation").
"""
import vlprompt.tta  # noqa: F401  (the TTA config node and the ``none`` procedure)
from vlprompt.utils import import_submodules

__all__ = import_submodules(__name__, __path__, kind="test-time procedure module")
