from .optimizer import build_optimizer
from .lr_scheduler import build_lr_scheduler
