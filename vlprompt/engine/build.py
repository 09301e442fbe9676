from vlprompt.utils import Registry, check_availability
from vlprompt.errors import InvalidValueError


class TrainerRegistry(Registry):
    """The trainer registry; a name ``Host+Plugin[+Plugin...]`` that is not registered yet is composed on
    demand from the host trainer and the plug-ins (:func:`vlprompt.engine.plugins.compose_trainer`) and
    registered under that name."""

    def resolve(self, name):
        """Compose ``name`` if it is a host + plug-ins spelling not registered yet (no-op otherwise)."""
        from .plugins import SEPARATOR, compose_trainer

        if isinstance(name, str) and SEPARATOR in name and name not in self._obj_map:
            compose_trainer(name, self)
        return name

    def get(self, name):
        self.resolve(name)
        return super().get(name)


TRAINER_REGISTRY = TrainerRegistry("TRAINER")


def build_trainer(cfg):
    if not cfg.TRAINER.NAME:
        raise InvalidValueError(f"TRAINER.NAME is empty: pass --trainer (registered trainers: "
                         f"{sorted(TRAINER_REGISTRY.registered_names())})")
    TRAINER_REGISTRY.resolve(cfg.TRAINER.NAME)
    avai_trainers = TRAINER_REGISTRY.registered_names()
    check_availability(cfg.TRAINER.NAME, avai_trainers)
    if cfg.VERBOSE:
        print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
