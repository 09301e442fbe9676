"""Data layer (Dassl's ``dassl.data``). ``DataManager``, ``DatasetWrapper`` and ``build_data_loader`` are
imported on first use, so the torch-free tools of this package (``python -m vlprompt.data.download``,
``python -m vlprompt.data.doctor``, the catalog) start without importing torch."""

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader"]


def __getattr__(name):
    if name in __all__:
        from . import data_manager

        return getattr(data_manager, name)
    raise AttributeError(f"module 'vlprompt.data' has no attribute {name!r}")
