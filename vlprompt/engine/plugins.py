"""Plug-ins: one file adds learnable modules, loss terms, test-time heads and hooks to any host trainer.

A plug-in (DePT, ATPrompt, ...) is evaluated on many host methods. It is written once, as a subclass of
:class:`Plugin` registered in :data:`PLUGIN_REGISTRY` (``trainers/plugins/<name>.py``), and **never
subclasses a host**. A host plus plug-ins is named with one spelling everywhere (``--trainer``,
``cfg.TRAINER.NAME``, the output tree's trainer level, results.json ``trainer``, table rows)::

    Host+Plugin[+Plugin...]          e.g.  CoOp+DePT,  MaPLe+DePT,  CoOp+DePT+ATPrompt

**Canonical order.** Every plug-in declares an ``ORDER`` (an int); the plug-ins of a spelling must be
written in increasing ``ORDER`` (ties by name). Another order is refused with one line that gives the
canonical spelling (it is not silently normalised: the name is also a folder name, and one run must have
one folder). The order of the spelling is also the order in which the plug-ins' hook points run.

**Composition.** ``TRAINER_REGISTRY.get("CoOp+DePT")`` (hence ``build_trainer``, ``train.py``,
:func:`vlprompt.engine.methods.method_spec`) resolves a spelling that is not registered yet with
:func:`compose_trainer`: it checks the host and every plug-in (one-line refusal naming why), generates a
trainer class from the host class and :class:`PluginHost` (the engine's, not the plug-in's), registers it
under the combined name and returns it. What the composed trainer declares (its method card: recipes per
protocol, table order, backbone support, config node, model name, eval-only, LR unit) is derived in ONE
function, :func:`composed_declarations`, from the host's card and the plug-ins' declarations.

**What a plug-in may provide** (hook points called by :class:`PluginHost`, in spelling order):

* :meth:`Plugin.build` -> its learnable ``nn.Module`` (or None), registered as a model under the plug-in's
  ``MODEL_NAME`` (its own checkpoint folder, so a host-only run can still load the host's folder and a
  host's checkpoint never holds plug-in state), with the optimisers of :meth:`Plugin.build_optimizers`
  (per-group learning rates: an optimiser of its own, stepped with the host's in the same engine step);
* :meth:`Plugin.loss_terms` -> edit the host's named loss terms / add its own, given the batch's
  :class:`Features` (image and text features before the logit product, captured by :class:`FeatureTap`);
* :meth:`Plugin.inference` -> replace the test logits (e.g. a head fused on the classes it was trained on);
* a prompt modifier: ``build`` may set ``model.prompt_modifier`` (:class:`vlprompt.clip.DeepPromptedCLIP`),
  which edits the learner's text prompts before the text encoder (ATPrompt's attribute tokens);
* :meth:`Plugin.set_classnames` (label-space swaps), :meth:`Plugin.hooks` (engine hooks with state,
  :class:`vlprompt.engine.hooks.HookBase`), :meth:`Plugin.refusal` (which hosts it supports).

Features are captured at the shared logit product :meth:`vlprompt.clip.PromptedCLIP.logits`: a host whose
similarity logits come from there (every prompt learner built on ``PromptedCLIP``) exposes its features
with no code of its own. docs/EXTENDING.md ("Add a plug-in") has a worked example.
"""
import itertools
from dataclasses import dataclass, replace

import torch

from vlprompt.config import ConfigError, add_trainer_cfg, register_cfg_extension
from vlprompt.protocol.card import card_of
from vlprompt.utils import Registry
from vlprompt.utils.errors import UnknownNameError, UserError

__all__ = [
    "PLUGIN_REGISTRY",
    "Plugin",
    "PluginError",
    "PluginHost",
    "Features",
    "FeatureTap",
    "SEPARATOR",
    "split_spelling",
    "compose_trainer",
    "composed_declarations",
    "supported_pairs",
    "forget_composed",
    "JointCacheOwner",
]

#: the character joining a host and its plug-ins in a trainer name
SEPARATOR = "+"

PLUGIN_REGISTRY = Registry("PLUGIN")


class PluginError(UserError, ValueError):
    """A host + plug-in spelling that cannot be composed (unsupported host, wrong order, unknown name)."""


# -----------------------------------------------------------------------------------------------
# features before the logit product
# -----------------------------------------------------------------------------------------------


@dataclass
class Features:
    """One call of the model's logit product: ``image`` (B, d) raw (not normalised) image features,
    ``text`` (K, d) or per-image (B, K, d) raw text features, ``logits`` (B, K) the similarity logits."""

    image: torch.Tensor
    text: torch.Tensor
    logits: torch.Tensor


class FeatureTap:
    """Records the calls of ``model.logits`` (:meth:`vlprompt.clip.PromptedCLIP.logits`) made inside a
    ``with`` block; :meth:`of` returns the :class:`Features` of the call whose logits the host returned."""

    def __init__(self, model):
        self.model = model
        self.records = []

    def __enter__(self):
        if getattr(self.model, "feature_tap", None) is not None:
            raise RuntimeError("a FeatureTap is already installed on this model (nested capture)")
        self.records = []
        self.model.feature_tap = self._record
        return self

    def __exit__(self, *exc):
        self.model.feature_tap = None
        return False

    def _record(self, image_features, text_features, logits):
        self.records.append(Features(image_features, text_features, logits))

    def of(self, logits, who="the host"):
        """The features behind ``logits`` (the same tensor, or a dtype copy of it)."""
        for rec in self.records:
            if rec.logits is logits or (rec.logits.shape == logits.shape
                                        and rec.logits.data_ptr() == logits.data_ptr()):
                return rec
        for rec in self.records:  # model_inference's ``.float()`` of lower-precision logits
            if rec.logits.shape == logits.shape and torch.equal(rec.logits.float(), logits.float()):
                return rec
        raise RuntimeError(
            f"{who}'s logits were not computed by the model's shared logit product (PromptedCLIP.logits; "
            f"{len(self.records)} call(s) seen): its features cannot be given to the plug-ins"
        )


# -----------------------------------------------------------------------------------------------
# the plug-in base class
# -----------------------------------------------------------------------------------------------


class JointCacheOwner:
    """Several modules seen as one by the evaluation text cache (:class:`vlprompt.clip.prompted.TextFeatureCache`):
    in training mode when any is, with the parameters and buffers of all (a prompt modifier's ``cache_owner``)."""

    def __init__(self, *modules):
        self.modules = modules

    @property
    def training(self):
        return any(m.training for m in self.modules)

    def parameters(self):
        return itertools.chain(*(m.parameters() for m in self.modules))

    def buffers(self):
        return itertools.chain(*(m.buffers() for m in self.modules))


class Plugin:
    """Base class of a plug-in (see the module docstring). Subclasses are registered with
    ``@PLUGIN_REGISTRY.register()`` and instantiated once per trainer (``self.trainer``)."""

    #: spelling position (smaller first) in ``Host+P1+P2``
    ORDER = 100
    #: name of its config node under ``cfg.TRAINER`` and that node's defaults (a config extension)
    CFG_NODE = None
    CFG_DEFAULTS = None
    #: checkpoint folder of its learnable module (default: the plug-in's name)
    MODEL_NAME = None
    #: folder under ``configs/trainers/`` of its configs (default: the plug-in's name)
    CONFIG_FOLDER = None
    #: supported hosts: ``{host spelling: RECIPES or None}``; a host spelling may itself carry plug-ins
    #: (``"CoOp+DePT"``). RECIPES name configs in ``CONFIG_FOLDER`` (None: the host's own recipes).
    HOSTS = {}
    #: hosts refused on purpose: ``{host name: why}`` (one line each; shown to the user)
    REFUSED = {}
    #: build right after the host's prompts, before the plug-ins that come earlier in the spelling (prompt
    #: modifiers, whose parameters belong to the prompt learner in the official codes: same random draws)
    BUILD_WITH_PROMPTS = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("CFG_DEFAULTS"):
            node, defaults = cls.CFG_NODE, dict(cls.CFG_DEFAULTS)
            if not node:
                raise TypeError(f"{cls.__name__} sets CFG_DEFAULTS but no CFG_NODE")

            def extend(cfg, node=node, defaults=defaults):
                add_trainer_cfg(cfg, node, defaults)

            extend.__name__ = f"extend_cfg_plugin_{node.lower()}"
            register_cfg_extension(extend)

    # ---- declarations ----------------------------------------------------------------------------

    @classmethod
    def name(cls):
        return cls.__name__

    @classmethod
    def model_name(cls):
        return cls.MODEL_NAME or cls.name()

    @classmethod
    def config_folder(cls):
        return cls.CONFIG_FOLDER or cls.name()

    @classmethod
    def refusal(cls, host_spelling, host_cls):
        """None when the plug-in supports ``host_spelling`` (class ``host_cls``), else one line why not."""
        if host_spelling in cls.HOSTS:
            return None
        base = host_spelling.split(SEPARATOR)[0]
        if base in cls.REFUSED and SEPARATOR not in host_spelling:
            return cls.REFUSED[base]
        return (f"{cls.name()} declares no support for {host_spelling} (supported hosts: "
                f"{', '.join(sorted(cls.HOSTS))})")

    # ---- per-trainer instance --------------------------------------------------------------------

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg
        self.module = None

    @property
    def plugin_cfg(self):
        """``cfg.TRAINER.<CFG_NODE>``."""
        return self.cfg.TRAINER[self.CFG_NODE]

    def build(self, classnames):
        """The plug-in's learnable module for the host's model ``self.trainer.model`` (or None)."""
        return None

    def build_optimizers(self, module):
        """``{name: (optimizer, scheduler)}`` of the plug-in's module; default: one from ``cfg.OPTIM``
        named after ``MODEL_NAME``."""
        from vlprompt.optim import build_lr_scheduler, build_optimizer

        optim = build_optimizer(module, self.cfg.OPTIM)
        return {self.model_name(): (optim, build_lr_scheduler(optim, self.cfg.OPTIM))}

    def loss_terms(self, terms, logits, features, label):
        """Edit / extend the host's named loss terms of one batch; returns the terms."""
        return terms

    def inference(self, logits, features):
        """The test logits given the host's (B, K) logits and their :class:`Features`."""
        return logits

    def set_classnames(self, classnames):
        """The label space changed in place (the host's model already follows it)."""

    def hooks(self):
        """``{name: HookBase}`` registered as ``<plugin>.<name>``."""
        return {}

    def adapt_state_dict(self, state_dict):
        """Map a checkpoint's state onto the plug-in module's keys (default: unchanged)."""
        return state_dict


# -----------------------------------------------------------------------------------------------
# the composed trainer
# -----------------------------------------------------------------------------------------------


class PluginHost:
    """Mixin placed before the host class in a composed trainer: runs the plug-ins' hook points around
    the host's ``build_model``, ``loss_terms``, ``model_inference`` and ``set_classnames``."""

    #: set by :func:`compose_trainer`
    HOST = None
    PLUGINS = ()

    def build_model(self):
        super().build_model()
        self.plugins = [p(self) for p in self.PLUGINS]
        classnames = self.dm.dataset.classnames
        for plugin in sorted(self.plugins, key=lambda p: not p.BUILD_WITH_PROMPTS):  # stable: spelling order
            module = plugin.build(classnames)
            if module is None:
                continue
            plugin.module = module
            module.to(self.device)
            for p in module.parameters():
                p.requires_grad_(True)
            n = sum(p.numel() for p in module.parameters() if p.requires_grad)
            print(f"{plugin.name()}: parameters to be updated: {sorted(n_ for n_, _ in module.named_parameters())}")
            print(f"{plugin.name()}: number of trainable parameters: {n:,}")
            if getattr(self, "num_trainable_params", None) is not None:
                self.num_trainable_params += n
            optimizers = list(plugin.build_optimizers(module).items())
            (first, (optim, sched)), rest = optimizers[0], optimizers[1:]
            self.register_model(plugin.model_name(), module, optim, sched, optim_name=first)
            for name, (o, s) in rest:
                self.register_optimizer(name, o, s, model=plugin.model_name())
        for plugin in self.plugins:
            for name, hook in plugin.hooks().items():
                self.register_hook(f"{plugin.name()}.{name}", hook)

    def loss_terms(self, *args, **kwargs):
        with FeatureTap(self.model) as tap:
            terms, logits = super().loss_terms(*args, **kwargs)
        features = tap.of(logits, who=self.HOST)
        label = args[1] if len(args) > 1 else kwargs["label"]
        terms = dict(terms)
        for plugin in self.plugins:
            terms = plugin.loss_terms(terms, logits, features, label)
        return terms, logits

    def model_inference(self, *args, **kwargs):
        with FeatureTap(self.model) as tap:
            logits = super().model_inference(*args, **kwargs)
        features = tap.of(logits, who=self.HOST)
        for plugin in self.plugins:
            logits = plugin.inference(logits, features)
        return logits

    def set_classnames(self, classnames):
        super().set_classnames(classnames)
        for plugin in self.plugins:
            plugin.set_classnames(list(classnames))

    def convert_state_dict_for(self, name, state_dict):
        for plugin in self.plugins:
            if plugin.module is not None and name == plugin.model_name():
                return plugin.adapt_state_dict(state_dict)
        return super().convert_state_dict_for(name, state_dict)


def split_spelling(name):
    """``"CoOp+DePT+ATPrompt"`` -> ``("CoOp", ["DePT", "ATPrompt"])``."""
    parts = [p.strip() for p in str(name).split(SEPARATOR)]
    if len(parts) < 2 or not all(parts):
        raise PluginError(f"Trainer name {name!r}: write a host and its plug-ins as Host+Plugin[+Plugin...]")
    return parts[0], parts[1:]


def _qualified(recipes, folder):
    """RECIPES with every config name as ``FOLDER/NAME`` (names that already carry a folder are kept)."""
    def q(config):
        return config if "/" in config else f"{folder}/{config}"

    out = {}
    for protocol, recipe in (recipes or {}).items():
        r = dict(recipe)
        r["config"] = q(r["config"])
        for key in ("per_dataset", "per_shots"):
            if r.get(key):
                r[key] = {k: q(v) for k, v in r[key].items()}
        out[protocol] = r
    return out


def composed_declarations(host_name, host_cls, plugins):
    """The method card of a composed trainer, derived from the host's card and the plug-ins' declarations
    (the ONE place that derives it), as the class namespace ``{"CARD": card}``:

    * recipes: the host's, unless a plug-in declares recipes for the spelling it is added to (the host, or
      host + the plug-ins before it); the last such plug-in wins, and then exactly its protocols run,
      with config names written as ``FOLDER/NAME`` in its folder;
    * ``order``: the host's + the number of plug-ins (rows right below the host; ties by name);
    * ``config_folder``: the folder of the recipes in use (listing of available configs);
    * everything else (backbone support, config node/defaults/arguments, model name, LR unit, eval-only):
      the host's (a plug-in acts on the features after the tower, so the frozen-tower feature store
      stays valid; ``LOG_ACC`` and ``FROZEN_IMAGE_FEATURES`` are inherited from the host class).
    """
    host = card_of(host_cls, host_name)
    card = replace(host, name="", order=host.order + len(plugins))
    spelling = host_name
    for plugin in plugins:
        declared = plugin.HOSTS.get(spelling)
        if declared:
            folder = plugin.config_folder()
            card = replace(card, config=None, recipes=_qualified(declared, folder), protocols=tuple(declared),
                           config_folder=folder)
        spelling = f"{spelling}{SEPARATOR}{plugin.name()}"
    return {"CARD": card}


def _canonical(plugins):
    return sorted(plugins, key=lambda p: (p.ORDER, p.name()))


def compose_trainer(name, registry):
    """The trainer class for the spelling ``name`` (``Host+P1[+P2...]``), registered in ``registry``."""
    if name in registry:
        return registry.get(name)
    host_name, plugin_names = split_spelling(name)
    if host_name not in registry:
        hosts = sorted(n for n in registry.registered_names() if SEPARATOR not in n)
        raise UnknownNameError(f"Unknown host trainer {host_name!r} in {name!r}. Registered trainers: {hosts}")
    host_cls = registry.get(host_name)
    plugins = []
    for p in plugin_names:
        if p not in PLUGIN_REGISTRY:
            raise UnknownNameError(f"Unknown plug-in {p!r} in {name!r}. Registered plug-ins: "
                                   f"{sorted(PLUGIN_REGISTRY.registered_names())}")
        plugins.append(PLUGIN_REGISTRY.get(p))
    if len({p.name() for p in plugins}) != len(plugins):
        raise PluginError(f"Trainer name {name!r} names a plug-in twice")
    canonical = _canonical(plugins)
    if canonical != plugins:
        spelled = SEPARATOR.join([host_name] + [p.name() for p in canonical])
        raise PluginError(f"Trainer name {name!r}: plug-ins are written in their canonical order (each plug-in's "
                          f"ORDER): use {spelled!r}")
    spelling = host_name
    for plugin in plugins:
        why = plugin.refusal(spelling, host_cls)
        if why:
            raise PluginError(f"{plugin.name()} cannot be added to {spelling}: {why}")
        spelling = f"{spelling}{SEPARATOR}{plugin.name()}"
    if not hasattr(host_cls, "loss_terms") or not hasattr(host_cls, "build_custom_clip"):
        raise PluginError(f"{host_name} cannot take plug-ins: it is not a CLIP prompt trainer "
                          "(vlprompt.engine.clip_trainer.ClipPromptTrainer)")
    attrs = composed_declarations(host_name, host_cls, plugins)
    attrs.update(HOST=host_name, PLUGINS=tuple(plugins), __module__=__name__,
                 __doc__=f"{host_name} with the plug-in(s) {', '.join(p.name() for p in plugins)} (composed).")
    cls = type(name, (PluginHost, host_cls), attrs)
    registry.register(cls)
    return cls


def forget_composed(registry):
    """Unregister every composed trainer (tests: a composed name is registered on first use)."""
    for name in [n for n in registry.registered_names() if SEPARATOR in n]:
        del registry._obj_map[name]


def supported_pairs(registry, plugin=None):
    """``[(host, plugin)]`` of every registered host a registered plug-in supports directly (contract
    tests and listings; ``plugin``: only that one)."""
    out = []
    for p in PLUGIN_REGISTRY.registered_names():
        if plugin is not None and p != plugin:
            continue
        cls = PLUGIN_REGISTRY.get(p)
        for host in cls.HOSTS:
            if SEPARATOR not in host and host in registry:
                out.append((host, p))
    return sorted(out)


def plugin_cfg_error(node, key, message):
    """A :class:`ConfigError` naming ``TRAINER.<node>.<key>``."""
    return ConfigError(f"TRAINER.{node}.{key}: {message}")


__all__.append("plugin_cfg_error")
