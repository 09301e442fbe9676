from .build import TRAINER_REGISTRY, build_trainer
from .checkpoint import LAST_CHECKPOINT, Checkpointer
from .hooks import HookBase
from .results_record import RESULTS_FILE, RESULTS_SCHEMA, build_results_record
from .trainer import SimpleTrainer, TrainerBase, TrainerX, TrainerXU, dist_info
