"""Test helpers: fabricated image-folder datasets, configs, and a minimal trainable trainer."""
import os
import os.path as osp

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from vlprompt.config import get_cfg_default, merge_from_list

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

COLORS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 220, 30), (200, 40, 210),
          (20, 210, 210), (250, 140, 20), (120, 60, 20), (128, 128, 128), (250, 250, 250)]


def make_image_folder(root, n_classes=5, n_per_class=10, size=32, seed=0, class_prefix="class"):
    """``root/<class_prefix>_<i>/img_<j>.jpg``: class i is a noisy image of colour i."""
    rng = np.random.RandomState(seed)
    os.makedirs(root, exist_ok=True)
    names = []
    for c in range(n_classes):
        name = f"{class_prefix}_{c}"
        names.append(name)
        d = osp.join(root, name)
        os.makedirs(d, exist_ok=True)
        base = np.array(COLORS[c % len(COLORS)], dtype=np.float32)
        for j in range(n_per_class):
            arr = base + rng.normal(0, 25, size=(size, size, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(osp.join(d, f"img_{j}.jpg"), quality=90)
    return names


def write_user_descriptions(root, folder, names, per_class=3):
    """Fabricated class descriptions of an ImageFolder dataset, where vlprompt looks for a user's file
    (``root/descriptions/user/<folder>.json``, the CoPrompt/CuPL format); ``per_class`` sentences per class."""
    import json

    path = osp.join(root, "descriptions", "user", f"{folder}.json")
    os.makedirs(osp.dirname(path), exist_ok=True)
    table = {n.replace("_", " "): [f"a {n.replace('_', ' ')} seen in picture number {i}." for i in range(per_class)]
             for n in names}
    with open(path, "w") as f:
        json.dump(table, f)
    return path


def make_cfg(root, trainer="", folder="", output_dir="", opts=None, backbone="test-vit-tiny"):
    """A config for the ImageFolder dataset with CoOp-like settings, small and fast."""
    cfg = get_cfg_default()
    from vlprompt.config import extend_cfg

    extend_cfg(cfg)
    cfg.DATASET.NAME = "ImageFolder"
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.FOLDER = folder
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.TRAINER.NAME = trainer
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.SEED = 1
    cfg.USE_CUDA = False
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 16
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.OPTIM.NAME = "sgd"
    cfg.OPTIM.LR = 0.01
    cfg.OPTIM.MAX_EPOCH = 2
    cfg.OPTIM.LR_SCHEDULER = "cosine"
    cfg.OPTIM.WARMUP_EPOCH = 1
    cfg.OPTIM.WARMUP_TYPE = "constant"
    cfg.OPTIM.WARMUP_CONS_LR = 1e-5
    cfg.TRAIN.PRINT_FREQ = 1
    opts = card_fixture_opts(trainer, root, backbone) + list(opts or [])
    if opts:
        merge_from_list(cfg, opts)
    return cfg


def card_fixture_opts(trainer, root, backbone="test-vit-tiny"):
    """The config options a registered trainer's method card says a generic build needs beside a config (its
    ``fixture``: PromptKD's fabricated teacher), prepared under ``root``; ``[]`` for every other trainer."""
    from vlprompt.engine import TRAINER_REGISTRY
    from vlprompt.engine.methods import method_card

    if not trainer or trainer not in TRAINER_REGISTRY.registered_names():
        return []
    card = method_card(trainer)
    if not card.fixture:
        return []
    return list(getattr(TRAINER_REGISTRY.get(trainer), card.fixture)(str(root), backbone))


def write_method_yaml(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


METHOD_YAML = """\
DATALOADER:
  TRAIN_X:
    BATCH_SIZE: 4
  TEST:
    BATCH_SIZE: 16
  NUM_WORKERS: 0
INPUT:
  SIZE: (224, 224)
  INTERPOLATION: "bicubic"
  PIXEL_MEAN: [0.48145466, 0.4578275, 0.40821073]
  PIXEL_STD: [0.26862954, 0.26130258, 0.27577711]
  TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]
OPTIM:
  NAME: "sgd"
  LR: 0.05
  MAX_EPOCH: 3
  LR_SCHEDULER: "cosine"
  WARMUP_EPOCH: 1
  WARMUP_TYPE: "constant"
  WARMUP_CONS_LR: 1e-5
TRAIN:
  PRINT_FREQ: 1
MODEL:
  BACKBONE:
    NAME: "test-vit-tiny"
USE_CUDA: False
"""


def register_linear_probe():
    """Register ``TestLinearProbe``: a linear head on frozen CLIP image features (idempotent)."""
    from vlprompt.clip import build_clip_from_cfg
    from vlprompt.engine import TRAINER_REGISTRY, TrainerX
    from vlprompt.metrics import compute_accuracy
    from vlprompt.optim import build_lr_scheduler, build_optimizer

    if "TestLinearProbe" in TRAINER_REGISTRY:
        return TRAINER_REGISTRY.get("TestLinearProbe")

    class Head(nn.Module):
        def __init__(self, d, k):
            super().__init__()
            self.fc = nn.Linear(d, k)

        def forward(self, x):
            return self.fc(x)

    class TestLinearProbe(TrainerX):
        fail_at = None  # (epoch, batch) at which to raise, to simulate a crash
        nan_at = None

        def build_model(self):
            self.clip = build_clip_from_cfg(self.cfg).to(self.device)
            for p in self.clip.parameters():
                p.requires_grad_(False)
            d = self.clip.text_projection.shape[1]
            self.head = Head(d, self.num_classes).to(self.device)
            self.optim = build_optimizer(self.head, self.cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
            self.register_model("head", self.head, self.optim, self.sched)

        def features(self, x):
            with torch.no_grad():
                return F.normalize(self.clip.encode_image(x), dim=-1)

        def forward_backward(self, batch):
            if type(self).fail_at == (self.epoch, self.batch_idx):
                raise KeyboardInterrupt("simulated crash")
            x, y = self.parse_batch_train(batch)[:2]
            out = self.head(self.features(x) * 10)
            loss = F.cross_entropy(out, y)
            if type(self).nan_at == (self.epoch, self.batch_idx):
                loss = loss * float("nan")
            self.model_backward_and_update(loss)
            if (self.batch_idx + 1) == self.num_batches:
                self.update_lr()
            return {"loss": loss.item(), "acc": compute_accuracy(out, y)[0].item()}

        def model_inference(self, x):
            return self.head(self.features(x) * 10)

    TRAINER_REGISTRY.register(TestLinearProbe)
    return TestLinearProbe


GOLDEN = osp.join(osp.dirname(osp.abspath(__file__)), "golden")


def assert_golden(name, text):
    """Compare ``text`` with ``tests/golden/<name>`` (``VLPROMPT_UPDATE_GOLDEN=1`` rewrites it)."""
    path = osp.join(GOLDEN, name)
    if os.environ.get("VLPROMPT_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{name} differs from the golden file (VLPROMPT_UPDATE_GOLDEN=1 to regenerate)"


def small_resnet_clip():
    """A small open_clip CLIP with a ModifiedResNet image tower (RN50's architecture family),
    built from a fixed seed without disturbing the caller's RNG."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return open_clip.model.CLIP(
            embed_dim=40,
            quick_gelu=True,
            vision_cfg=dict(image_size=224, layers=(1, 1, 1, 1), width=8, head_width=32),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2, mlp_ratio=2.0),
        ).eval()


def method_model(trainer_name, clip_model, classnames, dataset="", **node_overrides):
    """A method's model as its trainer builds it: ``TRAINER_REGISTRY.get(trainer_name).custom_clip(...)``.

    The config is the default one (``get_cfg_default()`` + ``extend_cfg``) with ``DATASET.NAME =
    dataset`` and ``cfg.TRAINER[<CFG_NODE>].<KEY> = value`` for every keyword (a key the node does not
    have raises ``KeyError``, so a typo cannot leave a test running on the defaults). Block argument
    errors come back as ``ConfigError`` naming ``TRAINER.<CFG_NODE>.<KEY>``.
    """
    import trainers  # noqa: F401  (registers the trainers and their config extensions)
    from vlprompt.config import extend_cfg
    from vlprompt.engine import TRAINER_REGISTRY

    cls = TRAINER_REGISTRY.get(trainer_name)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    node = cfg.TRAINER[cls.CFG_NODE]
    for key, value in node_overrides.items():
        if key not in node:
            raise KeyError(f"TRAINER.{cls.CFG_NODE} has no key {key!r} (keys: {sorted(node)})")
        setattr(node, key, value)
    cfg.DATASET.NAME = dataset
    return cls.custom_clip(cfg, classnames, clip_model)


def crash_copy_and_resume(run, common, full, killed, trainer_cls, monkeypatch, epoch=1):
    """The uninterrupted run and a killed-then-resumed run of one command, for two runs' cost instead of three.

    ``run(argv)`` runs train.py's command line on ``["--output-dir", full] + common``; at the start of epoch
    ``epoch`` its output folder is copied to ``killed`` (without the lock file) -- exactly what a run of the same
    command killed at that moment leaves on disk, since a SIGKILL runs nothing after it (the process side of a
    kill is tested with real processes and signals in test_engine_checkpoints.py and test_reliability.py). The
    same command is then run again on ``killed``, which resumes from that copy.
    """
    import shutil

    from vlprompt.engine import LAST_CHECKPOINT
    from vlprompt.utils.lock import LOCK_NAME

    original = trainer_cls.run_epoch
    copied = []

    def run_epoch_copying_first(self):
        if self.epoch == epoch and not copied:
            shutil.copytree(full, killed, ignore=shutil.ignore_patterns(LOCK_NAME))
            copied.append(epoch)
        return original(self)

    monkeypatch.setattr(trainer_cls, "run_epoch", run_epoch_copying_first)
    try:
        assert run(["--output-dir", str(full), *common]) == 0
    finally:
        monkeypatch.setattr(trainer_cls, "run_epoch", original)
    assert copied == [epoch], f"the run never reached epoch {epoch}"
    resume_point = [d for d, _, files in os.walk(killed) if LAST_CHECKPOINT in files]
    assert resume_point, f"no per-epoch resume point in the folder at the start of epoch {epoch}"
    assert run(["--output-dir", str(killed), *common]) == 0


_TOY_BUILT = set()


def shared_toy_root(*names):
    """A data root holding the toy datasets ``names`` (default ToyShapes), shared by every test of the run.

    All xdist workers of one run use the same folder (``VLPROMPT_TEST_TOY_ROOT``, set by tests/conftest.py
    under pytest's base temp folder of the run) and each dataset is built there once: in a torch-free child
    process, which renders over a fork pool (a worker has torch loaded and would render on one core), under
    the dataset's own build lock, so a second worker waits for the first and then reuses its build. Tests
    must not modify it (a test that needs its own copy builds one under its tmp_path)."""
    import subprocess
    import sys
    import tempfile

    from vlprompt.toy.data import TOY_DATASETS, verify_toy_dataset

    names = names or ("ToyShapes",)
    root = os.environ.get("VLPROMPT_TEST_TOY_ROOT")
    if not root:
        root = os.environ["VLPROMPT_TEST_TOY_ROOT"] = tempfile.mkdtemp(prefix="vlprompt_toy_")
    todo = [n for n in names if (root, n) not in _TOY_BUILT and not verify_toy_dataset(
        TOY_DATASETS[n], osp.join(root, TOY_DATASETS[n].dirname), check_content=False)[0]]
    if todo:
        code = ("import sys\nfrom vlprompt.toy.data import ensure_toy_dataset\n"
                "for name in sys.argv[2:]:\n    ensure_toy_dataset(name, sys.argv[1], log=None)\n")
        repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
        subprocess.run([sys.executable, "-c", code, root, *todo], cwd=repo, check=True)
    _TOY_BUILT.update((root, n) for n in names)
    return root
