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


@dataclass
class MethodTable:
    order: List[str] = field(default_factory=list)  # trainer names in table order
    recipes: Dict[str, dict] = field(default_factory=dict)  # trainer -> protocol -> recipe
    note: Optional[str] = None  # why the table is empty (the method table could not be loaded)

    def rank(self, trainer):
        """Sort key: declared order first, then unknown trainers by name."""
        if trainer in self.order:
            return (self.order.index(trainer), trainer)
        return (len(self.order), trainer)

    def recipe(self, trainer, protocol):
        return (self.recipes.get(trainer) or {}).get(protocol)


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
