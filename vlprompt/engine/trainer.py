"""Trainer base classes with Dassl's lifecycle, attribute names and log lines (engine.md §3).

``TrainerBase`` -> ``SimpleTrainer`` -> ``TrainerX``. Differences from Dassl (all documented in
docs/ENGINE.md): checkpoints also carry RNG states so that a resumed run ends bit-for-bit like an
uninterrupted one; a non-finite loss names the epoch and batch; every test on the test split writes
``results.json``; ``load_model`` formats ``val_result=None`` safely; the test loop shows a tqdm bar
only on a terminal; under torch.distributed only rank 0 logs, saves and writes results.
"""
import datetime
import inspect
import json
import os
import os.path as osp
import random
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from vlprompt.config import config_digest
from vlprompt.data import DataManager
from vlprompt.evaluation import build_evaluator
from vlprompt.utils import (
    AverageMeter,
    MetricMeter,
    load_checkpoint,
    mkdir_if_missing,
    package_versions,
    resume_from_checkpoint,
    save_checkpoint,
    write_json,
)

RESULTS_FILE = "results.json"
RESULTS_SCHEMA = 1


def dist_info():
    """``(rank, world_size)``; ``(0, 1)`` outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def get_rng_state():
    """RNG states of python, numpy and torch as plain tensors/numbers (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainerBase:
    """Model bookkeeping, checkpoints and the epoch loop."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        assert name not in self._models, "Found duplicate model names"
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is not None:
            if not isinstance(names, list):
                names = [names]
            for name in names:
                assert name in names_real, f"Unknown model name {name!r}; registered: {names_real}"
            return names
        return names_real

    @property
    def is_main_process(self):
        return dist_info()[0] == 0

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        if not self.is_main_process:
            return
        names = self.get_model_names()
        rng = get_rng_state()
        for name in names:
            model_dict = self._models[name].state_dict()
            optim_dict = self._optims[name].state_dict() if self._optims[name] is not None else None
            sched_dict = self._scheds[name].state_dict() if self._scheds[name] is not None else None
            state = {
                "state_dict": model_dict,
                "epoch": epoch + 1,
                "optimizer": optim_dict,
                "scheduler": sched_dict,
                "val_result": val_result,
                "rng_state": rng,
            }
            extra = self.extra_checkpoint_state(name)
            if extra:
                state["extra"] = extra
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def extra_checkpoint_state(self, name):
        """Hook: plain-tensor state (e.g. a second optimizer) saved with model ``name``."""
        return None

    def load_extra_checkpoint_state(self, name, extra):
        """Hook: restore what :meth:`extra_checkpoint_state` saved."""

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        file_missing = False
        for name in names:
            path = osp.join(directory, name)
            if not osp.exists(osp.join(path, "checkpoint")):
                file_missing = True
                break
        if file_missing or not names:
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        rng = None
        for name in names:
            path = osp.join(directory, name)
            start_epoch, ckpt = resume_from_checkpoint(
                path, self._models[name], self._optims[name], self._scheds[name], return_checkpoint=True)
            if ckpt.get("extra") is not None:
                self.load_extra_checkpoint_state(name, ckpt["extra"])
            rng = ckpt.get("rng_state", rng)
        if rng is not None:
            set_rng_state(rng)
        return start_epoch

    def load_model(self, directory, epoch=None):
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        names = self.get_model_names()
        model_file = "model-best.pth.tar"
        if epoch is not None:
            model_file = "model.pth.tar-" + str(epoch)
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise FileNotFoundError(f'Model not found at "{model_path}"')
            checkpoint = load_checkpoint(model_path)
            state_dict = checkpoint["state_dict"]
            epoch_ = checkpoint["epoch"]
            val_result = checkpoint.get("val_result")
            vr = f"{val_result:.1f}" if isinstance(val_result, (int, float)) else str(val_result)
            print(f"Load {model_path} to {name} (epoch={epoch_}, val_result={vr})")
            self._models[name].load_state_dict(state_dict)

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
        names = self.get_model_names(names)
        for name in names:
            if self._scheds[name] is not None:
                self._scheds[name].step()

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

    def train(self, start_epoch, max_epoch):
        """Generic training loop."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

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

    def model_zero_grad(self, names=None):
        names = self.get_model_names(names)
        for name in names:
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        names = self.get_model_names(names)
        for name in names:
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)


class SimpleTrainer(TrainerBase):
    """A trainer with data, evaluator, checkpoint policy and results.json."""

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
        self.build_model()
        if dist_info()[1] > 1:
            from .distributed import sync_learnable_parameters

            n = sync_learnable_parameters([self._models[k] for k in self._models])
            print(f"Distributed: world size {dist_info()[1]}, {n:,} learnable parameters synchronised")
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf

    def check_cfg(self, cfg):
        """Hook to check cfg before it is stored (receives cfg; ``self.cfg`` does not exist yet)."""

    def build_data_loader(self):
        dm = DataManager(self.cfg)
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

    def before_train(self):
        directory = self.cfg.OUTPUT_DIR
        if self.cfg.RESUME:
            directory = self.cfg.RESUME
        self.start_epoch = self.resume_model_if_exist(directory)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        mkdir_if_missing(writer_dir)
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def before_epoch(self):
        sampler = getattr(self.train_loader_x, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)

    def after_train(self):
        print("Finish training")
        do_test = not self.cfg.TEST.NO_TEST
        if do_test:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = round(time.time() - self.time_start)
        elapsed = str(datetime.timedelta(seconds=elapsed))
        print(f"Elapsed: {elapsed}")
        self.close_writer()

    def after_epoch(self):
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        meet_checkpoint_freq = (
            (self.epoch + 1) % self.cfg.TRAIN.CHECKPOINT_FREQ == 0 if self.cfg.TRAIN.CHECKPOINT_FREQ > 0 else False
        )
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            is_best = curr_result > self.best_result
            if is_best:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

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
        show = sys.stderr.isatty() and self.is_main_process
        for batch_idx, batch in enumerate(tqdm(data_loader, disable=not show, desc=f"eval {split}")):
            input, label = self.parse_batch_test(batch)
            output = self.model_inference(input)
            self.evaluator.process(output, label)
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
        cfg = self.cfg
        info = dict(self.run_info)
        config_file = info.get("config_file", "")
        now = time.time()
        started = info.get("started_at", self._time_created)
        trained = hasattr(self, "time_start")
        record = {
            "schema": RESULTS_SCHEMA,
            "trainer": cfg.TRAINER.NAME,
            "dataset": cfg.DATASET.NAME,
            "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
            "shots": cfg.DATASET.NUM_SHOTS,
            "seed": cfg.SEED,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "config_file": config_file,
            "config_name": osp.splitext(osp.basename(config_file))[0] if config_file else "",
            "dataset_config_file": info.get("dataset_config_file", ""),
            "config_digest": config_digest(cfg),
            "phase": info.get("phase", "train" if trained else "eval"),
            "model_dir": info.get("model_dir", ""),
            "load_epoch": info.get("load_epoch"),
            "split": "test",
            "metrics": {k: float(v) for k, v in metrics.items()},
            "num_classes": int(self.num_classes),
            "num_test": len(self.dm.dataset.test),
            "epochs": int(self.max_epoch) if trained else 0,
            "wall_time_s": round(now - started, 3),
            "eval_time_s": round(eval_seconds, 3) if eval_seconds is not None else None,
            "started_at": datetime.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
            "finished_at": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
            "output_dir": osp.abspath(cfg.OUTPUT_DIR),
            "device": str(self.device),
            "world_size": dist_info()[1],
            "versions": package_versions(),
            "config": json.loads(json.dumps(_cfg_to_dict(cfg), default=str)),
        }
        extra = self.extra_results()
        if extra:
            record["extra"] = extra
        path = osp.join(cfg.OUTPUT_DIR, RESULTS_FILE)
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


def _cfg_to_dict(node):
    from yacs.config import CfgNode

    if isinstance(node, CfgNode):
        return {k: _cfg_to_dict(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return [_cfg_to_dict(v) for v in node]
    return node


class TrainerX(SimpleTrainer):
    """A trainer that uses only labelled data (every CoOp-family method)."""

    def _forward_backward_wants_epoch(self):
        try:
            params = list(inspect.signature(self.forward_backward).parameters.values())
        except (TypeError, ValueError):
            return False
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        # Optional extension: trainers whose forward_backward takes (batch, epoch) (the public APLe
        # file does) get the epoch as well.
        with_epoch = self._forward_backward_wants_epoch()
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            if with_epoch:
                loss_summary = self.forward_backward(batch, self.epoch)
            else:
                loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)

            self._log_iteration(losses, batch_time, data_time)
            end = time.time()

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

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        if self.train_loader_u is None:
            raise ValueError(
                f"{type(self).__name__} needs unlabelled data, but dataset {self.cfg.DATASET.NAME} has no train_u"
            )
        len_x, len_u = len(self.train_loader_x), len(self.train_loader_u)
        count_iter = self.cfg.TRAIN.COUNT_ITER
        if count_iter == "train_x":
            self.num_batches = len_x
        elif count_iter == "train_u":
            self.num_batches = len_u
        elif count_iter == "smaller_one":
            self.num_batches = min(len_x, len_u)
        else:
            raise ValueError(f'TRAIN.COUNT_ITER must be "train_x", "train_u" or "smaller_one", got {count_iter!r}')
        iter_x, iter_u = iter(self.train_loader_x), iter(self.train_loader_u)
        end = time.time()
        for self.batch_idx in range(self.num_batches):
            try:
                batch_x = next(iter_x)
            except StopIteration:
                iter_x = iter(self.train_loader_x)
                batch_x = next(iter_x)
            try:
                batch_u = next(iter_u)
            except StopIteration:
                iter_u = iter(self.train_loader_u)
                batch_u = next(iter_u)
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch_x, batch_u)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            self._log_iteration(losses, batch_time, data_time)
            end = time.time()

    def parse_batch_train(self, batch_x, batch_u):
        input_x = batch_x["img"].to(self.device)
        label_x = batch_x["label"].to(self.device)
        input_u = batch_u["img"].to(self.device)
        return input_x, label_x, input_u
