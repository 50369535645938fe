"""Building a stacked group: the data on the device, the single models, the network.

``GroupBuilder`` (mixed into ``StackedTrainer``) owns what a group is made of:

* ``_setup(config)``: the data set on the device and the split rules the whole group
  shares (steps per epoch, batch, augmentation); "val" rows index the test set under
  ``eval_protocol="test"``, as ``bnn_core.train``'s ``evaluation_split`` chooses them.
* ``_single_model(config)``: a trial's initial model, bit-identical to the one
  ``bnn_core.train.train`` builds for it (same seed, same RNG draws), without touching the
  caller's global RNG.
* ``_build(n)``: the stacked network of ``n`` slots (verified against the single models once
  for non-sequential architectures; a compiled one of the same shape is taken from
  ``compile_cache`` instead), its optimizer, the per-slot index tables and, with
  ``capture``, the CUDA-graph step. ``release_group`` hands a compiled network back.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ConfigError, TrainConfig
from ..data import load_dataset, split_indices
from ..devices import resolve_device
from ..layers import binary_layers, use_latent_weights
from ..models import build_model
from . import compile_cache
from .capture import GraphStep, resolve_capture
from .network import StackedNetwork, stack_models, verify_stacking
from .optim import LATENT_FAMILIES, StackedOptimizer
from .stackable import check_stackable
from .tuning import choose_conv_impl

__all__ = ["GroupBuilder"]

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults: the real Adam and latent-adam
ADAM_EPS = 1e-7  # bnn_core.optim.REAL_ADAM_EPS (real parameters)
LATENT_ADAM_EPS = 1e-8  # torch.optim.Adam's default, as build_optimizer's latent-adam uses


class GroupBuilder:
    """Group construction of ``StackedTrainer`` (see the module docstring)."""

    def _setup(self, config: TrainConfig) -> None:
        check_stackable([config])
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # Shapes are static (fixed N and batch): let cuDNN pick the fastest grouped kernels.
            torch.backends.cudnn.benchmark = True
        data = self.dataset or load_dataset(
            config.dataset, config.data_root, subdir=config.data_subdir, download=config.download
        )
        self.data = data
        self.x_train = torch.from_numpy(np.ascontiguousarray(data.x_train)).to(self.device)
        self.y_train = torch.from_numpy(np.ascontiguousarray(data.y_train)).to(self.device)
        self.x_test: Tensor | None = None
        self.y_test: Tensor | None = None
        # eval_protocol "test" (reproduction mode): the "val" metrics are the test set's.
        self.val_is_test = config.eval_protocol == "test"
        if self.val_is_test:
            self._load_test_set()
        self.augment = data.augment_by_default if config.augment is None else config.augment
        train_idx, val_idx = self._split(config)
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        # DeviceLoader(drop_last=True): a split smaller than one batch is one short batch.
        self.batch = min(config.batch_size, self.n_train)
        self.steps_per_epoch = self.n_train // self.batch
        self.family = config.optimizer.name

    def _split(self, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers of the trial's training and "val" images, as ``bnn_core.train``'s
        ``evaluation_split`` chooses them (val rows index the test set under "test")."""
        n_images = len(self.data.y_train)
        if config.eval_protocol == "test":
            order = np.random.default_rng(config.seed).permutation(n_images)
            return np.sort(order[: config.max_train_samples]), np.arange(len(self.data.y_test))
        return split_indices(n_images, config.val_fraction, config.seed, config.max_train_samples)

    def _load_test_set(self) -> None:
        if self.x_test is None:
            self.x_test = torch.from_numpy(np.ascontiguousarray(self.data.x_test)).to(self.device)
            self.y_test = torch.from_numpy(np.ascontiguousarray(self.data.y_test)).to(self.device)

    def _single_model(self, config: TrainConfig) -> nn.Module:
        # Same initial weights as bnn_core.train.train (manual_seed, then build_model), but
        # without touching the caller's global RNG.
        if config.optimizer.name in LATENT_FAMILIES:
            return self._single_latent_model(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(
                config.model, self.data.input_shape, self.data.num_classes, **self.model_options
            )
        return model

    def _single_latent_model(self, config: TrainConfig) -> nn.Module:
        """As ``bnn_core.train``: manual_seed, build_model, ``.to(device)``, channels_last,
        then ``build_optimizer``'s ``use_latent_weights(model, latent_init_scale)``, which
        draws the latent weights from the RNG of the device they are on (the CUDA generator
        on a GPU, seeded by the same manual_seed), so that device's RNG is forked too."""
        device = self.device
        forked: list[int] = []
        if device.type == "cuda":
            forked = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(config.seed)
            model = build_model(
                config.model, self.data.input_shape, self.data.num_classes, **self.model_options
            ).to(device)
            if config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            use_latent_weights(model, config.optimizer.latent_init_scale)
        return model

    # ------------------------------------------------------------------ the group
    def _build(self, n: int, models: list[nn.Module] | None = None) -> None:
        """The group of ``n`` slots: network (a compiled one of this shape is reused),
        optimizer, index tables and, if asked, the captured step."""
        start = time.perf_counter()
        compiling = self.reference.compile and self.compile_failed is None
        key = self._compile_key(n) if compiling else None
        cached = compile_cache.checkout(key) if key is not None else None
        if cached is not None:  # its trials are loaded before they train
            network, self.forward = cached.network, cached.forward
            self.conv_impl_chosen, self.conv_timings = network.conv_impl, {}
        else:
            network = self._stack(n, models)
            self.forward = compile_cache.compile_network(network).forward if compiling else network
        self.network = network
        self._compile_key = key
        self._compile_pending = compiling and cached is None
        self.optimizer = StackedOptimizer(
            network, self.family, betas=ADAM_BETAS, adam_eps=ADAM_EPS, latent_eps=LATENT_ADAM_EPS
        )
        self.layer_names = [name for name, _ in binary_layers(network.template)]
        self.train_index = torch.zeros(self.n_train, n, dtype=torch.int64, device=self.device)
        self.val_index = torch.zeros(self.n_val, n, dtype=torch.int64, device=self.device)
        self.n_slots = n
        self._graph: GraphStep | None = None
        if resolve_capture(self.capture, self.device):
            self._graph = GraphStep(self._step, self._capture_key)
        self.timings["build"] += time.perf_counter() - start

    def _stack(self, n: int, models: list[nn.Module] | None) -> StackedNetwork:
        config = self.reference
        template = self._single_model(config)
        check = self.verify if self.verify is not None else not isinstance(template, nn.Sequential)
        if models is None:
            # Placeholders (every slot is loaded before its first step); distinct weights
            # when they are used to verify the stacking.
            seeds = [replace(config, seed=config.seed + i) for i in range(n)]
            models = [self._single_model(c) for c in seeds] if check else [template] * n
        network = stack_models(models).to(self.device)
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last)
            network.channels_last = True
        if check:
            example = torch.randn(2, n, *self.data.input_shape, device=self.device)
            if not verify_stacking([m.to(self.device) for m in models], network, example):
                raise ConfigError("model", f"{config.model!r} cannot be stacked exactly")
        self._choose_conv_impl(network, n)
        return network

    def _choose_conv_impl(self, network: StackedNetwork, n: int) -> None:
        if self.conv_impl == "auto":
            example = torch.randn(self.batch, n, *self.data.input_shape, device=self.device)
            impl, self.conv_timings = choose_conv_impl(network, example, self.reference.precision)
        else:
            impl, self.conv_timings = self.conv_impl, {}
        network.conv_impl = impl
        self.conv_impl_chosen = impl

    def _compile_key(self, n: int) -> tuple:
        """Everything that fixes the compiled graph (see ``compile_cache``)."""
        config = self.reference
        return (
            config.model, repr(sorted(self.model_options.items())), tuple(self.data.input_shape),
            self.data.num_classes, n, self.batch, config.precision, config.channels_last,
            str(self.device), self.family, self.conv_impl, compile_cache.BACKEND,
        )  # fmt: skip

    def _capture_key(self) -> tuple:
        """The host-side optimizer state a captured step depends on (see ``capture``)."""
        opt = self.optimizer
        ops = tuple(tuple(sorted(ops.items())) for ops in opt.latent_ops)
        return tuple(opt.unbiased_trials), ops

    def release_group(self, reuse: bool) -> None:
        """Drop the group; with ``reuse`` its compiled network waits for the next group."""
        if reuse:
            self.park_compiled()
        self._graph = None
        del self.forward, self.optimizer, self.network

    def park_compiled(self) -> None:
        """Hand the compiled network to ``compile_cache`` for the next group of its shape
        (the trainer keeps its references for inspection; it trains no more)."""
        if self._compile_key is not None and self.compile_failed is None:
            compiled = compile_cache.Compiled(self.network, self.forward)
            compile_cache.checkin(self._compile_key, compiled)
            self._compile_key = None
