"""What the tables need from the method table: the row order of trainers and their recipes.

Both come from the trainers' method cards (``order``, ``config``/``recipes``) through
:func:`vlprompt.engine.methods.method_cards`, imported only when needed (it loads the repository's ``trainers`` package,
and so torch). When that import fails, :func:`default_methods` returns an empty table (trainers in
name order, no recipe rows merged) together with a one-line note saying why; the CLI prints the note
and the tables carry it.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

__all__ = ["MethodTable", "default_methods", "load_methods"]

SEPARATOR = "+"  # a host and its plug-ins (vlprompt.engine.plugins.SEPARATOR; this module stays torch-free)


@dataclass
class MethodTable:
    order: List[str] = field(default_factory=list)  # trainer names in table order
    recipes: Dict[str, dict] = field(default_factory=dict)  # trainer -> protocol -> recipe
    note: Optional[str] = None  # why the table is empty (the method table could not be loaded)

    def rank(self, trainer):
        """Sort key: declared order first, then unknown trainers by name. A host + plug-in trainer
        (``CoOp+DePT``) that the registry can compose sorts right below its host (ties by name)."""
        if trainer in self.order:
            return (self.order.index(trainer), trainer)
        host = trainer.split(SEPARATOR)[0]
        if host in self.order and self._composed(trainer) is not None:
            return (self.order.index(host), trainer)
        return (len(self.order), trainer)

    def recipe(self, trainer, protocol):
        recipes = self.recipes.get(trainer)
        if recipes is None and self._composed(trainer) is not None:
            recipes = self.recipes[trainer]
        return (recipes or {}).get(protocol)

    def _composed(self, trainer):
        """The recipes of a host + plug-in trainer met in the results (composed on demand by the registry,
        its card derived from the host's), cached; None when it cannot be composed."""
        if SEPARATOR not in trainer or self.note is not None or not self.order:
            return None
        if trainer not in self.recipes:
            try:
                from vlprompt.engine.methods import method_card

                self.recipes[trainer] = method_card(trainer).all_recipes()
            except Exception:  # an unknown host or plug-in: the row stays unknown (listed after the others)
                return None
        return self.recipes[trainer]


def load_methods():
    """The method table of the registered trainers (plugins loaded), or an empty one with a note."""
    try:
        from vlprompt.engine.methods import load_plugins, method_cards

        load_plugins()
        cards = method_cards()
    except Exception as e:  # ImportError, or any error raised while a plugin registers
        return MethodTable(note=f"the method table could not be loaded ({type(e).__name__}: {e}); trainers are "
                                f"listed by name and recipe override runs keep their own rows")
    return MethodTable(order=[c.name for c in cards], recipes={c.name: c.all_recipes() for c in cards})


_DEFAULT = []


def default_methods():
    """:func:`load_methods`, loaded once per process."""
    if not _DEFAULT:
        _DEFAULT.append(load_methods())
    return _DEFAULT[0]
