"""vlprompt: prompt learning on CLIP-style vision-language models.

A Dassl-compatible engine (``vlprompt.config``, ``vlprompt.engine``, ``vlprompt.data``,
``vlprompt.optim``, ``vlprompt.evaluation``, ``vlprompt.metrics``, ``vlprompt.utils``),
open_clip backbones with prompted encoders (``vlprompt.clip``), result aggregation and sweeps.

Trainers and datasets live in the repository-root folders ``trainers/`` and ``datasets/``;
``vlprompt`` never imports them.
"""

__version__ = "0.1.0"
