"""Build a published network from its card and safetensors weights — never unpickling anything.

The card's ``architecture.net`` is a Hydra config. Before :func:`hydra.utils.instantiate` sees it, every
``_target_`` in it must name a class *defined in* the ``stemforge.networks`` package that is a ``torch.nn.Module``
(resolving ``stemforge.networks.fcunet.torch.load`` would otherwise reach ``torch.load`` through a module attribute);
only the Hydra keys ``_target_``, ``_args_``, ``_recursive_`` and ``_convert_`` are accepted, and no string
may hold an interpolation (``${...}``). Weights are read with :func:`safetensors.torch.load_file` and
loaded with ``strict=True``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

from .download import Pulled, pull
from .errors import IntegrityError, RegistryError, UnsafeModelError

__all__ = ["load", "load_pulled", "build_net", "check_net_config", "RegisteredModel", "Preprocessor"]

_NETWORKS = "stemforge.networks"
_TARGET = re.compile(r"stemforge\.networks(\.[A-Za-z_][A-Za-z0-9_]*)+")
_HYDRA_KEYS = {"_target_", "_args_", "_recursive_", "_convert_"}


def _resolve_target(target: object):
    """The class a ``_target_`` names, if it is an ``nn.Module`` subclass defined under ``stemforge.networks``.

    Cards written before the ``stemforge.*`` namespace (``networks.fcunet.FCUNet``) are mapped onto the new paths
    when they are read (:func:`stemforge.registry.card.upgrade_card`), never resolved as top-level packages."""
    import torch

    if not isinstance(target, str) or not _TARGET.fullmatch(target):
        raise UnsafeModelError(f"refusing _target_ {target!r}: only classes of the '{_NETWORKS}' package may be built")
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnsafeModelError(f"refusing _target_ {target!r}: cannot import {module_name} ({err})") from None
    obj = module.__dict__.get(attr)
    if not (
        inspect.isclass(obj)
        and issubclass(obj, torch.nn.Module)
        and (obj.__module__ == _NETWORKS or obj.__module__.startswith(_NETWORKS + "."))
    ):
        raise UnsafeModelError(f"refusing _target_ {target!r}: not an nn.Module class defined in '{_NETWORKS}'")
    return obj


def check_net_config(cfg: object, where: str = "net") -> None:
    """Raise :class:`UnsafeModelError` unless ``cfg`` only builds ``stemforge.networks`` modules (see module
    docstring)."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if not isinstance(key, str):
                raise UnsafeModelError(f"refusing {where}: non-string key {key!r}")
            if key.startswith("_") and key.endswith("_") and key not in _HYDRA_KEYS:
                raise UnsafeModelError(f"refusing {where}: Hydra key {key!r} is not allowed in a model card")
            if key == "_convert_" and value not in ("none", "all", "partial", "object"):
                raise UnsafeModelError(f"refusing {where}: bad _convert_ {value!r}")
            if key == "_target_":
                _resolve_target(value)
            check_net_config(value, f"{where}.{key}")
    elif isinstance(cfg, list):
        for i, value in enumerate(cfg):
            check_net_config(value, f"{where}[{i}]")
    elif isinstance(cfg, str):
        if "${" in cfg:
            raise UnsafeModelError(f"refusing {where}: interpolation {cfg!r} is not allowed in a model card")
    elif not (cfg is None or isinstance(cfg, (bool, int, float))):
        raise UnsafeModelError(f"refusing {where}: value of type {type(cfg).__name__}")


def build_net(net_cfg: dict):
    """Instantiate a network from a card's ``architecture.net`` after :func:`check_net_config`."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not isinstance(net_cfg, dict) or "_target_" not in net_cfg:
        raise UnsafeModelError("refusing model card: architecture.net is not a config with a _target_")
    check_net_config(net_cfg)
    try:
        net = instantiate(OmegaConf.create(net_cfg), _convert_="all")
    except Exception as err:  # noqa: BLE001 - any failure to build the net is one RegistryError line
        cause = err.__cause__ or err
        raise RegistryError(
            f"cannot build {net_cfg['_target_']} from the card: {type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else ''}"
        ) from None
    if not isinstance(net, torch.nn.Module):
        raise UnsafeModelError(f"refusing model card: {net_cfg['_target_']} did not build an nn.Module")
    return net


def load_weights(net, path: str | os.PathLike, what: str = "weights") -> None:
    """Load a safetensors file into ``net`` with ``strict=True`` (clear errors on mismatch)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise IntegrityError(f"{what} at {path} are not a valid safetensors file: {err}") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else ""
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise IntegrityError(f"{what} do not fit the card's architecture: {first} {detail}".strip()) from None


class Preprocessor:
    """The card's input normalisation for ``(pattern, probe)`` pairs, as in training
    (``stemforge.datamodules.normalise``).

    ``probe_max``: pattern and probe are divided by the maximum of the probe (per sample); then, if ``power``
    differs from 1, both are clipped at 0 and raised to ``power``. ``none``: only the power step.

    Parameters
    ----------
    spec : dict
        The card's ``input`` (``shape``, ``normalisation``).
    """

    def __init__(self, spec: dict):
        norm = spec.get("normalisation") or {"mode": "none", "power": 1.0}
        self.mode = norm.get("mode", "probe_max")
        self.power = float(norm.get("power", 1.0))
        if self.mode not in ("probe_max", "none"):
            raise RegistryError(f"unknown normalisation mode {self.mode!r} in the model card (upgrade stemforge?)")
        self.shape = tuple(spec.get("shape") or ())

    @staticmethod
    def _as_batch(x, what: str):
        import numpy as np
        import torch

        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().float()
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[:, None]
        elif t.ndim != 4 or t.shape[1] != 1:
            raise ValueError(f"{what} must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(t.shape)}")
        return t

    def __call__(self, pattern, probe):
        """Return ``(pattern, probe)`` as normalised float32 tensors of shape (B, 1, H, W)."""
        import torch

        p, q = self._as_batch(pattern, "pattern"), self._as_batch(probe, "probe")
        if self.shape and tuple(p.shape[-2:]) != self.shape:
            raise ValueError(
                f"pattern is {tuple(p.shape[-2:])} px but the model was trained on {self.shape} px; "
                "resample it to the card's shape and pixel size first"
            )
        if q.shape[-2:] != p.shape[-2:]:
            raise ValueError(f"probe {tuple(q.shape[-2:])} and pattern {tuple(p.shape[-2:])} differ in shape")
        if q.shape[0] == 1 and p.shape[0] > 1:
            q = q.expand(p.shape[0], -1, -1, -1)
        elif q.shape[0] != p.shape[0]:
            raise ValueError(f"{p.shape[0]} patterns but {q.shape[0]} probes")
        if self.mode == "probe_max":
            peak = q.amax(dim=(1, 2, 3), keepdim=True)
            if not bool((peak > 0).all()):
                raise ValueError("probe image has no positive pixel; cannot normalise by its maximum")
            p, q = p / peak, q / peak
        if self.power == 0.5:  # the same numbers as ** 0.5, faster
            p, q = torch.sqrt(p.clamp_min(0)), torch.sqrt(q.clamp_min(0))
        elif self.power != 1.0:
            p, q = p.clamp_min(0) ** self.power, q.clamp_min(0) ** self.power
        return p.to(torch.float32).contiguous(), q.to(torch.float32).contiguous()


class RegisteredModel:
    """A published network ready for inference.

    Attributes
    ----------
    name, version : str
    net : torch.nn.Module
        The network in eval mode, ``net(pattern, probe)`` with normalised (B, 1, H, W) tensors.
    card : dict
        The model card.
    input_spec : dict
        ``card["input"]``: shape, Å⁻¹ per pixel, energy / convergence ranges, normalisation, probe convention.
    labels : dict
        ``card["labels"]``: what the output means.
    files : dict
        Cached paths of ``model.safetensors`` and ``card.json``.
    offline : bool
        True if the store was unreachable and the verified cached copy was used.
    """

    def __init__(self, pulled: Pulled, net, device: str = "cpu"):
        self.name, self.version = pulled.name, pulled.version
        self.card = pulled.card
        self.files = dict(pulled.files)
        self.offline = pulled.offline
        self.input_spec = self.card.get("input", {})
        self.labels = self.card.get("labels", {})
        self.preprocess = Preprocessor(self.input_spec)
        self.net = net.to(device).eval()
        self.device = device

    def __repr__(self) -> str:
        return (
            f"RegisteredModel({self.name}:{self.version}, {self.card.get('architecture', {}).get('net_class')}, "
            f"task={self.card.get('task')!r})"
        )

    def to(self, device: str) -> RegisteredModel:
        """Move the network to ``device``."""
        self.net.to(device)
        self.device = device
        return self

    def __call__(self, pattern, probe, preprocess: bool = True):
        """Run the network (no gradients): raw ``pattern`` and ``probe`` are normalised first unless told not to."""
        import torch

        if preprocess:
            pattern, probe = self.preprocess(pattern, probe)
        with torch.no_grad():
            return self.net(pattern.to(self.device), probe.to(self.device))

    def predict_mc(self, pattern, probe, n_samples: int = 20, preprocess: bool = True):
        """MC-dropout ``(mean, variance)`` for networks that support it (U-Net, FCU-Net)."""
        if not hasattr(self.net, "predict_mc"):
            raise RegistryError(f"{type(self.net).__name__} has no MC-dropout prediction")
        if preprocess:
            pattern, probe = self.preprocess(pattern, probe)
        return self.net.predict_mc((pattern.to(self.device), probe.to(self.device)), n_samples)


def load_pulled(pulled: Pulled, device: str = "cpu") -> RegisteredModel:
    """Build and load a model that is already verified in the cache."""
    card = pulled.card
    net = build_net((card.get("architecture") or {}).get("net"))
    load_weights(net, pulled.files["model.safetensors"], f"weights of {pulled.name} {pulled.version}")
    return RegisteredModel(pulled, net, device)


def load(
    ref: str,
    version: str | None = None,
    store: str | None = None,
    cache: str | os.PathLike | None = None,
    device: str = "cpu",
) -> RegisteredModel:
    """Fetch (or reuse from the cache), verify and build a published model.

    Parameters
    ----------
    ref : str
        ``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS`` (``"bragg-unet:stable"``; a bare name means ``latest``).
    version : str, optional
        Version or alias given separately (``load("bragg-unet", version="1.0.0")``).
    store : str, optional
        Store URL (default ``$STEMFORGE_STORE`` or the local default store).
    cache : path, optional
        Cache folder (default ``$STEMFORGE_CACHE`` or ``$XDG_CACHE_HOME/stemforge``).
    device : str
        Torch device for the network.

    Returns
    -------
    RegisteredModel
        ``.net`` (eval mode), ``.card``, ``.input_spec``, ``.labels``, ``.preprocess(pattern, probe)``; calling
        it runs preprocessing and the network without gradients.

    Examples
    --------
    >>> from stemforge import registry
    >>> model = registry.load("bragg-unet:stable", store="https://models.example.org/stemforge")  # doctest: +SKIP
    >>> vg_map = model(pattern, probe)   # raw (H, W) arrays in, (1, 1, H, W) map out          # doctest: +SKIP
    """
    return load_pulled(pull(ref, version=version, store=store, cache=cache), device)
