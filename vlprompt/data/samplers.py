"""Samplers (Dassl's ``build_sampler``): the CoOp family needs Random and Sequential."""
import random
from collections import defaultdict

from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler
from vlprompt.errors import InvalidValueError


class RandomClassSampler(Sampler):
    """Batches of ``batch_size`` holding ``n_ins`` instances from each of ``batch_size/n_ins`` classes."""

    def __init__(self, data_source, batch_size, n_ins):
        if batch_size < n_ins:
            raise InvalidValueError(f"batch_size={batch_size} must be no less than n_ins={n_ins}")
        self.data_source = data_source
        self.batch_size = batch_size
        self.n_ins = n_ins
        self.ncls_per_batch = self.batch_size // self.n_ins
        self.index_dic = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_dic[item.label].append(index)
        self.labels = list(self.index_dic.keys())
        if len(self.labels) < self.ncls_per_batch:
            raise InvalidValueError("Not enough classes for RandomClassSampler")
        self.length = 0
        for label in self.labels:
            n = len(self.index_dic[label])
            self.length += max(n, n_ins) // n_ins * n_ins

    def __iter__(self):
        batch_idxs_dict = defaultdict(list)
        for label in self.labels:
            idxs = list(self.index_dic[label])
            if len(idxs) < self.n_ins:
                idxs = random.choices(idxs, k=self.n_ins)
            random.shuffle(idxs)
            batch = []
            for idx in idxs:
                batch.append(idx)
                if len(batch) == self.n_ins:
                    batch_idxs_dict[label].append(batch)
                    batch = []
        avai_labels = list(self.labels)
        final_idxs = []
        while len(avai_labels) >= self.ncls_per_batch:
            selected = random.sample(avai_labels, self.ncls_per_batch)
            for label in selected:
                final_idxs.extend(batch_idxs_dict[label].pop(0))
                if not batch_idxs_dict[label]:
                    avai_labels.remove(label)
        return iter(final_idxs)

    def __len__(self):
        return self.length


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=2):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins)
    raise InvalidValueError(
        f"Unknown sampler type {sampler_type!r}; vlprompt supports RandomSampler, SequentialSampler, RandomClassSampler"
    )
