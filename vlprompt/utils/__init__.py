from .errors import (CheckpointError, DataNotFoundError, ImageReadError, InvalidValueError, UnknownNameError,
                     UserError, UserFileError, UserPathNotFoundError, UserRuntimeError)
from .registry import Registry, check_availability
from .meters import AverageMeter, MetricMeter
from .logger import Logger, setup_logger, restore_stdout
from .tools import (
    atomic_write,
    check_isfile,
    clean_stale_tmp,
    current_umask,
    default_file_mode,
    import_submodules,
    collect_env_info,
    listdir_nohidden,
    mkdir_if_missing,
    package_versions,
    read_image,
    read_json,
    set_random_seed,
    tolist_if_not,
    write_json,
)
from .torchtools import (
    CheckpointError,
    count_num_param,
    load_checkpoint,
    load_pretrained_weights,
    resume_from_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from .lock import OutputDirLock, OutputDirLocked
