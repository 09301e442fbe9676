"""The 15 benchmark datasets of the CoOp family, registered in ``DATASET_REGISTRY``.

Importing this package registers them (``train.py`` and the tests do). Facts such as folder names,
split files and sizes live in :mod:`vlprompt.data.catalog`; see docs/DATASETS.md.
"""
from . import caltech101  # noqa: F401
from . import dtd  # noqa: F401
from . import eurosat  # noqa: F401
from . import fgvc_aircraft  # noqa: F401
from . import food101  # noqa: F401
from . import imagenet  # noqa: F401
from . import imagenet_a  # noqa: F401
from . import imagenet_r  # noqa: F401
from . import imagenet_sketch  # noqa: F401
from . import imagenetv2  # noqa: F401
from . import oxford_flowers  # noqa: F401
from . import oxford_pets  # noqa: F401
from . import stanford_cars  # noqa: F401
from . import sun397  # noqa: F401
from . import ucf101  # noqa: F401
