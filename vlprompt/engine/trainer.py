"""Trainer base classes with Dassl's lifecycle, attribute names and log lines (docs/ENGINE.md).

``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX``. What the engine owns, so that a method file holds
only its idea:

* **the optimisation step** (:meth:`TrainerBase.step`): zero_grad -> non-finite check naming epoch and
  batch -> scaled (amp) or plain backward -> step of all or a named subset of the optimisers;
* **named optimisers**: ``register_model(name, model, optim, sched)`` (Dassl) registers the model's
  first optimiser; ``register_optimizer(name, optim, sched, model=...)`` adds more (APLe's text and
  vision prompts); all are checkpointed and resumed under their names (:mod:`.checkpoint`);
* **one loop** (:meth:`TrainerBase.train` / :meth:`TrainerBase.run_epoch`) that knows neither data nor
  optimisers: each epoch iterates the trainer's batch source (:mod:`vlprompt.data.batch_sources`: the labelled loader,
  labelled + unlabelled pairs, an iteration budget, stored feature views) and calls ``forward_backward``;
* **services as hooks** (:mod:`.hooks`), one ordered list with state: resume, LR stepping (per epoch, Dassl's
  trajectory, or per iteration; a ported Dassl trainer that still calls ``update_lr()`` itself at the
  last batch is not stepped twice), the methods' own hooks (prompt aggregation, EMA), evaluation
  (best-val, the final test), checkpoints (numbered, best-val, the per-epoch ``model-last.pth.tar``
  resume point), the timer and tensorboard;
* precision scaler, logging of every named loss term, ``results.json`` (:mod:`.results_record`).

Differences from Dassl are listed in docs/ENGINE.md.
"""
import datetime
import os
import os.path as osp
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from tqdm import tqdm

from vlprompt.data import DataManager
from vlprompt.errors import UserPathNotFoundError
from vlprompt.evaluation import build_evaluator
from vlprompt.utils import AverageMeter, MetricMeter, mkdir_if_missing, write_json

from vlprompt.data.batch_sources import LoaderSource, PairedSource, wants_epoch
from .checkpoint import Checkpointer
from .hooks import engine_hooks
from .results_record import RESULTS_FILE, RESULTS_SCHEMA, build_results_record
from .rng import get_rng_state, set_rng_state  # noqa: F401  (re-exported for ported code)

__all__ = ["TrainerBase", "SimpleTrainer", "TrainerX", "TrainerXU", "dist_info", "RESULTS_FILE", "RESULTS_SCHEMA"]


def dist_info():
    """``(rank, world_size)``; ``(0, 1)`` outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TrainerBase:
    """Model and optimiser bookkeeping, the optimisation step, hooks, checkpoints and the epoch loop."""

    #: when the engine steps the LR schedulers: once at the end of every epoch (Dassl, every CoOp-family
    #: method) or after every training iteration ("iteration": schedules counted in iterations, e.g.
    #: CLIP-LoRA's cosine over 500 x shots iterations)
    LR_SCHEDULE_UNIT = "epoch"

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._optimizers = OrderedDict()  # name -> (optimizer, scheduler, model name, primary)
        self._hooks = OrderedDict()
        self._writer = None
        self.scaler = None
        self.images_trained = 0  # labelled training images the loop fed in this process (results.json cost)
        self.checkpointer = Checkpointer(self)

    # ---- registration ------------------------------------------------------------------------

    def register_model(self, name="model", model=None, optim=None, sched=None, optim_name=None):
        """Register ``model`` (its checkpoint folder is ``name``) with its first optimiser/scheduler.

        The optimiser is known to :meth:`step` as ``optim_name`` (default: the model name).
        """
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        assert name not in self._models, "Found duplicate model names"
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched
        if optim is not None:
            self._add_optimizer(optim_name or name, optim, sched, name, primary=True)

    def register_optimizer(self, name, optim, sched=None, model=None):
        """Add a named optimiser (and scheduler) saved with ``model``'s checkpoint (default: the first
        registered model)."""
        models = self.get_model_names()
        if not models:
            raise RuntimeError("register_model() must come before register_optimizer()")
        model = model or models[0]
        self.get_model_names(model)
        self._add_optimizer(name, optim, sched, model, primary=False)

    def _add_optimizer(self, name, optim, sched, model, primary):
        if name in self._optimizers:
            raise KeyError(f"An optimiser named {name!r} is already registered")
        if primary and any(o[2] == model and o[3] for o in self._optimizers.values()):
            raise KeyError(f"Model {model!r} already has its first optimiser")
        self._optimizers[name] = (optim, sched, model, primary)

    def register_hook(self, name, hook):
        """Register an engine hook (:class:`vlprompt.engine.hooks.HookBase`) under ``name``; hooks run in
        the order of their ``PRIORITY`` (ties: registration order)."""
        if name in self._hooks:
            raise KeyError(f"A hook named {name!r} is already registered")
        hook.trainer = self
        self._hooks[name] = hook
        order = sorted(enumerate(self._hooks.items()), key=lambda ih: (ih[1][1].PRIORITY, ih[0]))
        self._hooks = OrderedDict(item for _, item in order)
        return hook

    def register_engine_hooks(self):
        """Register the engine's services (:func:`vlprompt.engine.hooks.engine_hooks`) as hooks."""
        for name, hook in engine_hooks(self.LR_SCHEDULE_UNIT):
            self.register_hook(name, hook)

    def _call_hooks(self, event):
        for hook in self._hooks.values():
            getattr(hook, event)()

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is not None:
            if not isinstance(names, list):
                names = [names]
            for name in names:
                assert name in names_real, f"Unknown model name {name!r}; registered: {names_real}"
            return names
        return names_real

    def get_optimizer_names(self, models=None):
        """Names of the registered optimisers (of the given models only, if given)."""
        if models is None:
            return list(self._optimizers)
        models = self.get_model_names(models)
        return [n for n, o in self._optimizers.items() if o[2] in models]

    @property
    def is_main_process(self):
        return dist_info()[0] == 0

    # ---- checkpoints -------------------------------------------------------------------------

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        if self.is_main_process:
            self.checkpointer.save(epoch, directory, is_best=is_best, val_result=val_result, model_name=model_name)

    def resume_model_if_exist(self, directory):
        return self.checkpointer.resume(directory)

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        from vlprompt.utils import load_checkpoint

        model_file = "model-best.pth.tar" if epoch is None else "model.pth.tar-" + str(epoch)
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise UserPathNotFoundError(f'Model not found at "{model_path}" (--model-dir / --load-epoch)')
            checkpoint = load_checkpoint(model_path)
            val_result = checkpoint.get("val_result")
            vr = f"{val_result:.1f}" if isinstance(val_result, (int, float)) else str(val_result)
            print(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={vr})")
            self._models[name].load_state_dict(checkpoint["state_dict"])

    # ---- modes, LR, the step -----------------------------------------------------------------

    def set_model_mode(self, mode="train", names=None):
        names = self.get_model_names(names)
        for name in names:
            if mode == "train":
                self._models[name].train()
            elif mode in ["test", "eval"]:
                self._models[name].eval()
            else:
                raise KeyError(mode)

    def update_lr(self, names=None):
        """Step the schedulers of the given models' optimisers (default: all), once."""
        seen = set()
        for opt_name in self.get_optimizer_names(names):
            sched = self._optimizers[opt_name][1]
            if sched is not None and id(sched) not in seen:
                seen.add(id(sched))
                sched.step()
        self._lr_stepped_epoch = getattr(self, "epoch", None)

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            where = ""
            if hasattr(self, "epoch") and hasattr(self, "batch_idx"):
                where = (f" at epoch {self.epoch + 1}/{getattr(self, 'max_epoch', '?')}, "
                         f"batch {self.batch_idx + 1}/{getattr(self, 'num_batches', '?')}")
            out = getattr(self, "output_dir", "")
            raise FloatingPointError(
                f"Loss is infinite or NaN!{where} (loss={loss.detach().float().cpu().tolist()}). "
                f"Training stopped; the last saved checkpoint in {out or 'the output directory'} is kept. "
                "Try PREC fp32/amp, a lower OPTIM.LR, or check the data."
            )

    def step(self, loss, optimizers=None, before_step=None):
        """One optimisation step; returns the total loss (a tensor).

        ``loss``: a scalar tensor or a mapping of named loss terms (summed). ``optimizers``: names of
        the optimisers to step (default: all registered). Order: zero the grads of those optimisers ->
        non-finite check (names epoch and batch) -> backward (scaled by ``self.scaler`` under amp) ->
        ``before_step()`` if given (e.g. a gradient projection editing ``.grad`` in place; under amp the
        grads are still scaled by the same factor) -> step them (through the scaler under amp) ->
        ``after_step`` hooks.
        """
        if isinstance(loss, Mapping):
            loss = sum(loss.values())
        names = list(self._optimizers) if optimizers is None else list(optimizers)
        unknown = [n for n in names if n not in self._optimizers]
        if unknown:
            raise KeyError(f"Unknown optimisers {unknown}; registered: {list(self._optimizers)}")
        optims = [self._optimizers[n][0] for n in names]
        for opt in optims:
            opt.zero_grad()
        self.detect_anomaly(loss)
        scaler = self.scaler
        if scaler is None:
            loss.backward()
            if before_step is not None:
                before_step()
            for opt in optims:
                opt.step()
        else:
            scaler.scale(loss).backward()
            if before_step is not None:
                before_step()
            for opt in optims:
                scaler.step(opt)
            scaler.update()
        self._call_hooks("after_step")
        return loss

    # Dassl's names for the same step
    def model_zero_grad(self, names=None):
        for n in self.get_optimizer_names(names):
            self._optimizers[n][0].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def model_update(self, names=None):
        for n in self.get_optimizer_names(names):
            if self.scaler is None:
                self._optimizers[n][0].step()
            else:
                self.scaler.step(self._optimizers[n][0])
        if self.scaler is not None:
            self.scaler.update()

    def model_backward_and_update(self, loss, names=None):
        return self.step(loss, self.get_optimizer_names(names))

    # ---- tensorboard ---------------------------------------------------------------------------

    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is None or self._writer is None:
            if not self.is_main_process:
                return
            from torch.utils.tensorboard import SummaryWriter

            print(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is None:
            return
        self._writer.add_scalar(tag, scalar_value, global_step)

    # ---- the loop ------------------------------------------------------------------------------

    def train(self, start_epoch, max_epoch):
        """The engine's one training loop: hooks (:mod:`.hooks`) around Dassl's before/after methods and
        :meth:`run_epoch` over the trainer's :meth:`batch_source`."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        self._call_hooks("before_train")
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self._call_hooks("before_epoch")
            self.run_epoch()
            self._call_hooks("after_epoch")
            self.after_epoch()
        self._call_hooks("after_train")
        self.after_train()

    def run_epoch(self):
        """One epoch: every item of :meth:`batch_source` goes through ``forward_backward``, with the
        per-iteration hooks and the Dassl log line."""
        self.set_model_mode("train")
        losses, batch_time, data_time = MetricMeter(), AverageMeter(), AverageMeter()
        source = self.batch_source()
        self.num_batches = len(source)
        end = time.time()
        for self.batch_idx, args in enumerate(source):
            data_time.update(time.time() - end)
            self._call_hooks("before_iter")
            loss_summary = self.forward_backward(*args)
            self.images_trained += _batch_size(args[0])
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            self._log_iteration(losses, batch_time, data_time)
            self._call_hooks("after_iter")
            end = time.time()

    def batch_source(self):
        """This epoch's batch source (:mod:`vlprompt.data.batch_sources`): a sized iterable of ``forward_backward``
        argument tuples."""
        raise NotImplementedError

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def _log_iteration(self, losses, batch_time, data_time):
        pass

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError


def _batch_size(batch):
    """Labelled items in a batch (a dict with ``label``, as every engine loader and batch source gives); the
    images of a batch without labels (:class:`~vlprompt.data.batch_sources.UnlabelledSource`)."""
    if not isinstance(batch, Mapping):
        return 0
    label = batch.get("label", batch.get("img"))
    return int(label.shape[0]) if hasattr(label, "shape") and len(label.shape) else 0


class EvalProgress:
    """Evaluation progress: a tqdm bar on a terminal; otherwise (log files, pipes, the demo) a line at
    every 10 % of the batches (when there are at least 10) with the elapsed time."""

    def __init__(self, split, total, enabled=True):
        self.split, self.total, self.enabled = split, total, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()
        self._next = 1

    def wrap(self, loader):
        if self.enabled and self.tty:
            return tqdm(loader, desc=f"eval {self.split}")
        return loader

    def update(self, done):
        if not self.enabled or self.tty or self.total < 10:
            return
        if done * 10 >= self._next * self.total:
            while done * 10 >= self._next * self.total:
                self._next += 1
            print(f"eval {self.split}: {done}/{self.total} batches ({100 * done // self.total}%), "
                  f"{time.time() - self.t0:.1f} s", flush=True)


class SimpleTrainer(TrainerBase):
    """A trainer with data, evaluator, checkpoint policy and results.json."""

    #: True when the test-time image features are those of the frozen, unprompted image tower (they do
    #: not depend on anything learned): evaluation then runs from the feature store (TEST.FEATURE_CACHE).
    #: Such a trainer provides ``model_inference(None, features=F)`` (logits from the tower's features
    #: of a batch) and a tower (``frozen_image_tower()`` or ``self.model.image_encoder``).
    FROZEN_IMAGE_FEATURES = False

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        if torch.cuda.is_available() and cfg.USE_CUDA:
            rank, world = dist_info()
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if world > 1 else torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.run_info = {}
        self._time_created = time.time()
        self.build_data_loader()
        self.register_engine_hooks()
        with self.zero_shot_text_source():
            self.build_model()
        if dist_info()[1] > 1:
            from .distributed import sync_learnable_parameters

            n = sync_learnable_parameters([self._models[k] for k in self._models])
            print(f"Distributed: world size {dist_info()[1]}, {n:,} learnable parameters synchronised")
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf  # kept up to date by the evaluation hook (best-val)

    def check_cfg(self, cfg):
        """Hook to check cfg before it is stored (receives cfg; ``self.cfg`` does not exist yet)."""

    def zero_shot_text_source(self):
        """The class text of every zero-shot head built by :meth:`build_model` (``MODEL.ZERO_SHOT_TEXT``:
        "templates" leaves the heads as they are; "descriptions" / "both" read the ``MODEL.DESCRIPTIONS``
        class descriptions of ``DATASET.NAME`` from ``DATASET.ROOT``; :func:`vlprompt.clip.zero_shot_text`)."""
        import contextlib

        mode = str(self.cfg.MODEL.ZERO_SHOT_TEXT)
        if mode == "templates":
            return contextlib.nullcontext()
        from vlprompt.clip.blocks import ZERO_SHOT_TEXT_MODES, zero_shot_text
        from vlprompt.config import ConfigError
        from vlprompt.data.descriptions import class_descriptions, descriptions_where, load_descriptions

        if mode not in ZERO_SHOT_TEXT_MODES:
            raise ConfigError(f"MODEL.ZERO_SHOT_TEXT must be one of {ZERO_SHOT_TEXT_MODES}, got '{mode}'")
        cfg = self.cfg
        source = str(cfg.MODEL.DESCRIPTIONS)
        table = load_descriptions(cfg.DATASET.ROOT, source, cfg.DATASET.NAME, cfg.DATASET.FOLDER)
        where = descriptions_where(cfg.DATASET.ROOT, source, cfg.DATASET.NAME, cfg.DATASET.FOLDER)
        print(f"Zero-shot class text: {mode} ({source} descriptions from {where})")
        return zero_shot_text(mode, lambda names: class_descriptions(table, names, where))

    def train_views(self):
        """How many augmented views of each training image the method reads (its card's ``views``; the
        training loaders then give ``batch["img"]`` as a list of that many; DATALOADER.K_TRANSFORMS)."""
        from vlprompt.protocol.card import card_of

        return int(getattr(card_of(type(self)), "views", 1) or 1)

    def build_data_loader(self):
        dm = DataManager(self.cfg, train_views=self.train_views())
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError(
            f"{type(self).__name__} must implement build_model() (Dassl's SimpleNet default is not provided)"
        )

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_epoch(self):
        sampler = getattr(self.train_loader_x, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on ``split`` (default ``TEST.SPLIT``); returns the accuracy."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        if split is None:
            split = self.cfg.TEST.SPLIT
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        t0 = time.time()
        # The feature store (vlprompt.features): a trainer whose test-time image features are those of
        # the frozen, unprompted image tower (FROZEN_IMAGE_FEATURES) is evaluated from stored features,
        # computed once per backbone/split/transform in these very batches (identical logits).
        from vlprompt.features.extract import cached_eval_batches

        cached = cached_eval_batches(self, data_loader, split)
        if cached is not None:
            for feats, label in cached:
                self.evaluator.process(self.model_inference(None, features=feats), label)
        else:
            progress = EvalProgress(split, len(data_loader), enabled=self.is_main_process)
            for batch_idx, batch in enumerate(progress.wrap(data_loader)):
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                self.evaluator.process(output, label)
                progress.update(batch_idx + 1)
        results = self.evaluator.evaluate()
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        if split == "test":
            self.write_results(results, eval_seconds=time.time() - t0)
        return list(results.values())[0]

    def write_results(self, metrics, eval_seconds=None):
        """Write ``OUTPUT_DIR/results.json`` (atomically; rank 0 only)."""
        if not self.is_main_process:
            return None
        record = build_results_record(self, metrics, eval_seconds=eval_seconds, world_size=dist_info()[1])
        path = osp.join(self.cfg.OUTPUT_DIR, RESULTS_FILE)
        write_json(record, path)
        return path

    def extra_results(self):
        """Hook: a dict of trainer-specific numbers added to results.json under ``extra``."""
        return None

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        return input, label

    def _log_iteration(self, losses, batch_time, data_time):
        """Dassl's per-iteration log line (every PRINT_FREQ batches) and the train/* scalars."""
        meet_freq = (self.batch_idx + 1) % self.cfg.TRAIN.PRINT_FREQ == 0
        only_few_batches = self.num_batches < self.cfg.TRAIN.PRINT_FREQ
        if (meet_freq or only_few_batches) and self.is_main_process:
            nb_remain = self.num_batches - self.batch_idx - 1
            nb_remain += (self.max_epoch - self.epoch - 1) * self.num_batches
            eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
            info = [
                f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                f"{losses}",
                f"lr {self.get_current_lr():.4e}",
                f"eta {eta}",
            ]
            print(" ".join(info))
        n_iter = self.epoch * self.num_batches + self.batch_idx
        for name, meter in losses.meters.items():
            self.write_scalar("train/" + name, meter.avg, n_iter)
        self.write_scalar("train/lr", self.get_current_lr(), n_iter)

    def get_current_lr(self, names=None):
        names = self.get_model_names(names)
        name = names[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """A trainer that uses only labelled data (every CoOp-family method)."""

    def batch_source(self):
        """The labelled loader; trainers whose ``forward_backward`` takes ``(batch, epoch)`` (the public
        APLe file does) also get the epoch."""
        return LoaderSource(self.train_loader_x, self.epoch if wants_epoch(self.forward_backward) else None)

    def parse_batch_train(self, batch):
        input = batch["img"].to(self.device)
        label = batch["label"].to(self.device)
        domain = batch["domain"].to(self.device)
        return input, label, domain


class TrainerXU(SimpleTrainer):
    """A trainer that uses labelled (``train_loader_x``) and unlabelled (``train_loader_u``) data.

    As in Dassl: the number of iterations per epoch follows ``TRAIN.COUNT_ITER`` ("train_x",
    "train_u" or "smaller_one"); the shorter loader restarts when exhausted; ``forward_backward``
    receives ``(batch_x, batch_u)``. No CoOp-family method uses it; it is here so that ported
    Dassl trainers run.
    """

    def batch_source(self):
        if self.train_loader_u is None:
            raise ValueError(
                f"{type(self).__name__} needs unlabelled data, but dataset {self.cfg.DATASET.NAME} has no train_u"
            )
        return PairedSource(self.train_loader_x, self.train_loader_u, self.cfg.TRAIN.COUNT_ITER)

    def parse_batch_train(self, batch_x, batch_u):
        input_x = batch_x["img"].to(self.device)
        label_x = batch_x["label"].to(self.device)
        input_u = batch_u["img"].to(self.device)
        return input_x, label_x, input_u
