"""``DataManager``, ``DatasetWrapper`` and ``build_data_loader`` (Dassl's data_manager)."""
import functools

import torch
import torchvision.transforms as T
from torch.utils.data import Dataset as TorchDataset

from vlprompt.utils import read_image

from .datasets import build_dataset
from .samplers import build_sampler
from .transforms import INTERPOLATION_MODES, build_transform
from vlprompt.errors import InvalidValueError


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0,
                      n_ins=2, tfm=None, is_train=True, dataset_wrapper=None):
    """A DataLoader over ``data_source`` (a list of Datum) with Dassl's settings.

    Under torch.distributed, training loaders use a ``DistributedSampler`` (seeded with
    ``cfg.SEED``, shuffled, ``drop_last``) so each rank sees its own shard of every epoch.
    """
    if _distributed() and is_train:
        seed = cfg.SEED if cfg.SEED >= 0 else 0
        sampler = torch.utils.data.distributed.DistributedSampler(
            data_source, shuffle=sampler_type != "SequentialSampler", seed=seed, drop_last=True)
    else:
        sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                                n_domain=n_domain, n_ins=n_ins)
    if dataset_wrapper is None:
        dataset_wrapper = DatasetWrapper
    drop_last = is_train and len(data_source) >= batch_size
    loader = torch.utils.data.DataLoader(
        dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=drop_last,
        pin_memory=(torch.cuda.is_available() and cfg.USE_CUDA),
        persistent_workers=False,
    )
    if len(loader) == 0:
        raise InvalidValueError(
            f"The data loader is empty ({len(data_source)} items, batch size {batch_size}); "
            "check the dataset split and DATALOADER.*.BATCH_SIZE"
        )
    return loader


class DataManager:
    """Builds the dataset of ``cfg.DATASET.NAME``, its transforms and loaders."""

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None, train_views=1):
        """``train_views``: the augmented views of each training image the trainer reads (at least
        ``DATALOADER.K_TRANSFORMS`` are made; with more than one, a training batch's ``"img"`` is a list of
        that many independently augmented (B, C, H, W) tensors, view 0 first; test loaders give one)."""
        dataset = build_dataset(cfg)
        wrapper = dataset_wrapper if dataset_wrapper is not None else DatasetWrapper
        train_wrapper = wrapper
        if int(train_views) > 1:
            train_wrapper = functools.partial(wrapper, min_views=int(train_views))

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            print("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            print("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        train_loader_x = build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER, data_source=dataset.train_x,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, n_domain=cfg.DATALOADER.TRAIN_X.N_DOMAIN,
            n_ins=cfg.DATALOADER.TRAIN_X.N_INS, tfm=tfm_train, is_train=True, dataset_wrapper=train_wrapper,
        )
        train_loader_u = None
        if dataset.train_u:
            u = cfg.DATALOADER.TRAIN_U
            sampler_type_, batch_size_, n_domain_, n_ins_ = u.SAMPLER, u.BATCH_SIZE, u.N_DOMAIN, u.N_INS
            if u.SAME_AS_X:
                x = cfg.DATALOADER.TRAIN_X
                sampler_type_, batch_size_, n_domain_, n_ins_ = x.SAMPLER, x.BATCH_SIZE, x.N_DOMAIN, x.N_INS
            train_loader_u = build_data_loader(
                cfg, sampler_type=sampler_type_, data_source=dataset.train_u, batch_size=batch_size_,
                n_domain=n_domain_, n_ins=n_ins_, tfm=tfm_train, is_train=True, dataset_wrapper=train_wrapper,
            )
        val_loader = None
        if dataset.val:
            val_loader = build_data_loader(
                cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=dataset.val,
                batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
                dataset_wrapper=dataset_wrapper,
            )
        test_loader = build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=dataset.test,
            batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False,
            dataset_wrapper=dataset_wrapper,
        )

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.train_loader_x = train_loader_x
        self.train_loader_u = train_loader_u
        self.val_loader = val_loader
        self.test_loader = test_loader
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        rows = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", str(cfg.DATASET.SOURCE_DOMAINS)])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", str(cfg.DATASET.TARGET_DOMAINS)])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            rows.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            rows.append(["# val", f"{len(self.dataset.val):,}"])
        rows.append(["# test", f"{len(self.dataset.test):,}"])
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        line = "-" * w0 + "  " + "-" * w1
        print(line)
        for a, b in rows:
            print(f"{a:<{w0}}  {b:<{w1}}")
        print(line)


class DatasetWrapper(TorchDataset):
    """Items as dicts ``{"label", "domain", "impath", "index", "img"[, "img2"...][, "img0"]}``."""

    def __init__(self, cfg, data_source, transform=None, is_train=False, min_views=1):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        # K augmented views of each training image: DATALOADER.K_TRANSFORMS, raised to what the trainer reads
        self.k_tfm = max(int(cfg.DATALOADER.K_TRANSFORMS), int(min_views)) if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        if self.k_tfm > 1 and transform is None:
            raise ValueError(f"Cannot augment the image {self.k_tfm} times because transform is None")
        interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
        to_tensor = [T.Resize(cfg.INPUT.SIZE, interpolation=interp_mode), T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        img0 = read_image(item.impath)
        if self.transform is not None:
            if isinstance(self.transform, (list, tuple)):
                for i, tfm in enumerate(self.transform):
                    img = self._transform_image(tfm, img0)
                    output["img" if i == 0 else f"img{i + 1}"] = img
            else:
                output["img"] = self._transform_image(self.transform, img0)
        else:
            output["img"] = img0
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        img_list = [tfm(img0) for _ in range(self.k_tfm)]
        return img_list[0] if len(img_list) == 1 else img_list
