"""``build_optimizer`` with Dassl's names, defaults and parameter-group rules."""
import warnings

import torch
import torch.nn as nn
from vlprompt.errors import InvalidValueError

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def build_optimizer(model, optim_cfg, param_groups=None):
    """Build an optimizer from ``cfg.OPTIM``.

    ``model`` is an ``nn.Module`` (all its parameters; frozen ones never get a gradient and are
    skipped by the optimizer) or an iterable of parameters / parameter-group dicts. ``param_groups``
    overrides both. With ``OPTIM.STAGED_LR`` the direct children named in ``OPTIM.NEW_LAYERS`` get
    the base LR and the others ``LR * BASE_LR_MULT``.
    """
    optim = optim_cfg.NAME
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    momentum = optim_cfg.MOMENTUM
    if optim not in AVAI_OPTIMS:
        raise InvalidValueError(f"OPTIM.NAME must be one of {AVAI_OPTIMS}, but got {optim!r}")

    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("OPTIM.STAGED_LR will be ignored because param_groups are given")

    if param_groups is None:
        if optim_cfg.STAGED_LR:
            if not isinstance(model, nn.Module):
                raise TypeError("When OPTIM.STAGED_LR is True, model given to build_optimizer() must be an nn.Module")
            if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
                model = model.module
            new_layers = optim_cfg.NEW_LAYERS
            if isinstance(new_layers, str):
                new_layers = [new_layers]
            if not new_layers:
                warnings.warn("OPTIM.NEW_LAYERS is empty (STAGED_LR is on)")
            base_params, new_params = [], []
            for name, module in model.named_children():
                if name in new_layers:
                    new_params += list(module.parameters())
                else:
                    base_params += list(module.parameters())
            param_groups = [
                {"params": base_params, "lr": lr * optim_cfg.BASE_LR_MULT},
                {"params": new_params},
            ]
        elif isinstance(model, nn.Module):
            param_groups = model.parameters()
        else:
            param_groups = model

    if optim == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay,
                                betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
    if optim == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay,
                                betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2), amsgrad=True)
    if optim == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if optim == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    if optim == "radam":
        # torch's RAdam (Dassl ships its own copy of the same algorithm).
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=weight_decay,
                                 betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay,
                             betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
