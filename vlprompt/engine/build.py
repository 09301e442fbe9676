from vlprompt.utils import Registry, check_availability
from vlprompt.errors import InvalidValueError

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    avai_trainers = TRAINER_REGISTRY.registered_names()
    if not cfg.TRAINER.NAME:
        raise InvalidValueError(f"TRAINER.NAME is empty: pass --trainer (registered trainers: {sorted(avai_trainers)})")
    check_availability(cfg.TRAINER.NAME, avai_trainers)
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
