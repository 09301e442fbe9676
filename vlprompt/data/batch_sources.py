"""Batch sources: what one epoch of the engine's one loop iterates over (docs/ENGINE.md, "The loop").

The loop (:meth:`vlprompt.engine.TrainerBase.run_epoch`) knows neither data nor optimisers. Every
epoch it asks the trainer for a batch source (:meth:`~vlprompt.engine.TrainerBase.batch_source`): a
sized iterable whose items are the argument tuples of one ``forward_backward`` call. What varies
between methods is only the source:

* :class:`LoaderSource`: the labelled loader (every prompt learner); a ``forward_backward(batch,
  epoch)`` signature (the public APLe file's) also receives the epoch;
* :class:`PairedSource`: labelled and unlabelled loaders side by side (Dassl's ``TrainerXU``; the
  epoch's length follows ``TRAIN.COUNT_ITER`` and the shorter loader restarts);
* :class:`UnlabelledSource`: a loader's batches with their labels removed (transductive methods such as
  PromptKD, which train on unlabelled images of every class: no label can reach the objective);
* :class:`IterationBudget`: ``n`` items of another source, chaining fresh passes (CLIP-LoRA's
  budget of ``N_ITERS x shots`` iterations spread over the epochs);
* ``vlprompt.features.training.FeatureViewSource``: stored features of one augmented view of the
  training images per epoch (CLIP-Adapter, Tip-Adapter-F).
"""
import inspect

__all__ = ["BatchSource", "LoaderSource", "UnlabelledSource", "PairedSource", "IterationBudget", "wants_epoch",
           "LABEL_KEYS"]


class BatchSource:
    """A sized iterable of ``forward_backward`` argument tuples (one epoch)."""

    def __len__(self):
        raise NotImplementedError

    def __iter__(self):
        raise NotImplementedError


def wants_epoch(forward_backward):
    """True when ``forward_backward`` takes a second required positional argument (the epoch)."""
    try:
        params = list(inspect.signature(forward_backward).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


class LoaderSource(BatchSource):
    """The batches of one pass over ``loader``: ``(batch,)``, or ``(batch, epoch)`` when ``epoch`` is
    given (trainers whose ``forward_backward`` takes the epoch)."""

    def __init__(self, loader, epoch=None):
        self.loader, self.epoch = loader, epoch

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield (batch,) if self.epoch is None else (batch, self.epoch)


#: the keys of a loader's batch that carry the class (removed by :class:`UnlabelledSource`)
LABEL_KEYS = ("label",)


class UnlabelledSource(LoaderSource):
    """The batches of one pass over ``loader`` without their labels: ``({"img", "domain", "impath",
    "index"},)``. The images of every class of the split come in; what the trainer's ``forward_backward``
    receives cannot tell it a class."""

    def __iter__(self):
        for (batch,) in super().__iter__():
            yield ({k: v for k, v in batch.items() if k not in LABEL_KEYS},)


COUNT_ITER = ("train_x", "train_u", "smaller_one")


class PairedSource(BatchSource):
    """``(batch_x, batch_u)`` pairs of a labelled and an unlabelled loader (Dassl's ``TrainerXU``).

    ``count_iter``: the epoch's length is that of ``train_x``, ``train_u`` or the ``smaller_one``;
    a loader that runs out restarts (a new pass, reshuffled by its sampler).
    """

    def __init__(self, loader_x, loader_u, count_iter="train_x"):
        if count_iter not in COUNT_ITER:
            raise ValueError(f"TRAIN.COUNT_ITER must be one of {COUNT_ITER}, got {count_iter!r}")
        self.loader_x, self.loader_u = loader_x, loader_u
        len_x, len_u = len(loader_x), len(loader_u)
        self.n = {"train_x": len_x, "train_u": len_u, "smaller_one": min(len_x, len_u)}[count_iter]

    def __len__(self):
        return self.n

    def __iter__(self):
        iter_x, iter_u = iter(self.loader_x), iter(self.loader_u)
        for _ in range(self.n):
            batch_x, iter_x = _next_restarting(iter_x, self.loader_x)
            batch_u, iter_u = _next_restarting(iter_u, self.loader_u)
            yield batch_x, batch_u


def _next_restarting(it, loader):
    try:
        return next(it), it
    except StopIteration:
        it = iter(loader)
        return next(it), it


class IterationBudget(BatchSource):
    """``n`` items of ``source`` (a batch source or a loader), chaining fresh passes as needed."""

    def __init__(self, source, n):
        self.source, self.n = source, int(n)

    def __len__(self):
        return self.n

    def __iter__(self):
        done = 0
        while done < self.n:
            empty = True
            for item in self.source:
                empty = False
                yield item
                done += 1
                if done == self.n:
                    return
            if empty:
                raise RuntimeError("IterationBudget: the underlying source yields no batch")
