"""Name -> object registries (Dassl's ``Registry``)."""
import difflib

from .errors import UnknownNameError


def check_availability(requested, available):
    """Raise :class:`UnknownNameError` (a ``ValueError``) when ``requested`` is not in ``available``,
    suggesting the closest names."""
    available = list(available)
    if requested in available:
        return
    close = difflib.get_close_matches(str(requested), [str(a) for a in available], n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownNameError(
        f"The requested one {requested!r} is not available.{hint} "
        f"Available: {sorted(available)}"
    )


class Registry:
    """A registry mapping names to classes or functions.

    ``@REG.register()`` stores a class under its ``__name__``; ``REG.register(obj)`` registers
    directly. Duplicate names raise ``KeyError`` unless ``force=True``.
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(
                f'An object named "{name}" was already registered in "{self._name}" registry'
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            close = difflib.get_close_matches(str(name), list(self._obj_map), n=3, cutoff=0.4)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f'Object name "{name}" does not exist in "{self._name}" registry.{hint} '
                f"Registered: {sorted(self._obj_map)}"
            )
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def __repr__(self):
        return f"Registry({self._name!r}, {sorted(self._obj_map)})"
