"""Tiny models, data and serial reference implementations shared by the tests.

The references are the plain-PyTorch forms of SAM and of Eq. 3 / Algorithm 1: the strategies must
match them parameter by parameter, step by step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

N_FEATURES, N_CLASSES = 5, 3


def in_float64(build: Callable[[], object]):
    """Build something (a model) with float64 as the default dtype."""
    torch.set_default_dtype(torch.float64)
    try:
        return build()
    finally:
        torch.set_default_dtype(torch.float32)


def make_net(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(N_FEATURES, 7)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(7))
    layers += [nn.Tanh(), nn.Linear(7, N_CLASSES)]
    return nn.Sequential(*layers)


class ViewFlatten(nn.Module):
    """``x.view(n, -1)``, as much user code flattens: it fails on a ``channels_last`` activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.size(0), -1)


class LayoutProbe(nn.Module):
    """Identity that appends "<pid> channels_last" or "<pid> contiguous" to ``path`` (None: records nothing).

    It sees the activation of a 2-D convolution: the replica's layout shows in the worker's lines.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: Tensor) -> Tensor:
        if self.path is not None:
            layout = "channels_last" if not x.is_contiguous() else "contiguous"
            with open(self.path, "a") as f:
                f.write(f"{os.getpid()} {layout}\n")
        return x


def make_conv_net(seed: int = 0, flatten_by_view: bool = False, probe: str | None = None) -> nn.Module:
    """Two 2-D convolutions over the N_FEATURES features seen as a 1 x N_FEATURES image, then a linear layer."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Unflatten(1, (1, 1, N_FEATURES)), nn.Conv2d(1, 4, (1, 3)), nn.Tanh(), nn.Conv2d(4, 6, (1, 2)), nn.Tanh(),
        LayoutProbe(probe), ViewFlatten() if flatten_by_view else nn.Flatten(), nn.Linear(12, N_CLASSES),
    )


def make_data(n: int = 48, seed: int = 1, dtype: torch.dtype = torch.float64) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g, dtype=dtype)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return TensorDataset(x, y)


def float32_batch(n: int = 8) -> tuple[Tensor, Tensor]:
    """The first ``n`` samples of ``make_data()`` in float32, as one batch: for a worker driven without Lightning."""
    ds = make_data(dtype=torch.float32)
    return ds.tensors[0][:n], ds.tensors[1][:n]


def make_optimizer(name: str, params) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    if name == "plain_sgd":  # no optimizer state: survives a second fit(), which rebuilds optimizers
        return torch.optim.SGD(params, lr=0.1)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.01)
    raise ValueError(name)


class TinyClassifier(L.LightningModule):
    """A user's ordinary LightningModule: nothing in it knows about SAM."""

    def __init__(self, optimizer: str = "sgd", batchnorm: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.optimizer_name = optimizer
        self.net = make_net(seed, batchnorm)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, self.parameters())


class Recorder(L.Callback):
    """Keeps a copy of the weights after every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[list[Tensor]] = []
        self._last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.steps.append([p.detach().clone() for p in pl_module.parameters()])


def fit_float64(strategy, optimizer: str = "sgd", accumulate: int = 1, epochs: int = 4, batch_size: int = 8,
                module: Callable[[str], L.LightningModule] = TinyClassifier, precision: str = "64-true",
                **trainer_kwargs) -> list[list[Tensor]]:
    """Fit ``module(optimizer)`` in float64 on ``make_data()``; the weights after every optimizer step.

    ``precision="32-true"`` leaves the float64 model and data as they are, with no precision hook
    between the loader and the step (as a float32 fit has: the next step's batch may then be lent).
    """
    model = in_float64(lambda: module(optimizer))
    rec = Recorder()
    callbacks = [rec, *trainer_kwargs.pop("callbacks", [])]
    t = trainer(strategy, max_epochs=epochs, precision=precision, callbacks=callbacks, accumulate_grad_batches=accumulate,
                **trainer_kwargs)
    t.fit(model, loader(make_data(), batch_size))
    return rec.steps


def reference_net(optimizer: str = "sgd") -> tuple[nn.Module, torch.optim.Optimizer]:
    """The same network and optimizer as ``TinyClassifier(optimizer)``, in float64, for a serial reference."""
    net = in_float64(lambda: TinyClassifier(optimizer).net)
    return net, make_optimizer(optimizer, net.parameters())


def loader(ds: TensorDataset, batch_size: int = 8) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def epochs_of(ds: TensorDataset, batch_size: int, epochs: int) -> list[list[tuple[Tensor, Tensor]]]:
    return [list(loader(ds, batch_size)) for _ in range(epochs)]


def _loss(net: nn.Module, batch) -> Tensor:
    x, y = batch
    return F.cross_entropy(net(x), y)


def _grads(net: nn.Module, batch) -> list[Tensor]:
    params = list(net.parameters())
    return list(torch.autograd.grad(_loss(net, batch), params))


def _perturb(net: nn.Module, g: Sequence[Tensor], rho: float) -> list[Tensor]:
    """w <- w + rho * g / (||g|| + eps), returning the exact old weights."""
    old = [p.detach().clone() for p in net.parameters()]
    norm = torch.sqrt(sum((x * x).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(net.parameters(), g):
            p.add_(x * (rho / (norm + 1e-12)))
    return old


def _adaptive_step(net: nn.Module, g: Sequence[Tensor], rho: float, eta: float) -> list[Tensor]:
    """ASAM's e = rho * T^2 g / (||T g|| + eps), T = |w| + eta for weights ("...weight"), 1 otherwise."""
    t = [p.detach().abs() + eta if name.endswith("weight") else torch.ones_like(p)
         for name, p in net.named_parameters()]
    norm = torch.sqrt(sum(((ti * x) ** 2).sum() for ti, x in zip(t, g)))
    return [ti * ti * x * (rho / (norm + 1e-12)) for ti, x in zip(t, g)]


def _add_step(net: nn.Module, e: Sequence[Tensor]) -> list[Tensor]:
    """w <- w + e, returning the exact old weights."""
    old = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p, x in zip(net.parameters(), e):
            p.add_(x)
    return old


def _restore(net: nn.Module, old: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, o in zip(net.parameters(), old):
            p.copy_(o)


def _head(batch, n: int):
    return tuple(t[:n] for t in batch)


def reference_asyncsam(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    epochs: list[list[tuple[Tensor, Tensor]]],
    rho: float,
    ascent_batch_size: int,
    ascent_data: str = "previous",
    accumulate: int = 1,
    adaptive: bool = False,
    eta: float = 0.01,
    before_epoch: Callable[[int, nn.Module], None] | None = None,
) -> list[list[Tensor]]:
    """Algorithm 1 (Eq. 3, tau = 1), serially. Returns the weights after every step.

    With ``adaptive``, the step is ASAM's ``rho * T^2 g / ||T g||`` on ``g = g_{t-1}``, T from w_t.
    The ascent leaves the network's buffers (running statistics) as they were: it runs on a
    replica, and only the descent updates the trainer's. ``before_epoch(epoch, net)`` runs as an
    ``on_train_epoch_start`` hook does.
    """
    history = []
    stale: list[Tensor] | None = None
    for epoch, batches in enumerate(epochs):
        if before_epoch is not None:
            before_epoch(epoch, net)
        steps = [batches[i : i + accumulate] for i in range(0, len(batches), accumulate)]
        for s, micro in enumerate(steps):
            # line 3: g_t at w_t on A_t (the worker runs this concurrently with the descent)
            if ascent_data == "next" and s + 1 < len(steps):
                source = steps[s + 1][0]
            else:  # "previous", and the last step of an epoch in "next" mode
                source = micro[0]
            buffers = [b.clone() for b in net.buffers()]
            g_t = _grads(net, _head(source, ascent_batch_size))
            with torch.no_grad():
                for b, kept in zip(net.buffers(), buffers):
                    b.copy_(kept)
            opt.zero_grad()
            step = _adaptive_step(net, stale, rho, eta) if adaptive and stale is not None else None
            for batch in micro:
                if step is not None:
                    old = _add_step(net, step)
                else:
                    old = _perturb(net, stale, rho) if stale is not None else None  # line 5
                (_loss(net, batch) / accumulate).backward()                        # line 6
                if old is not None:
                    _restore(net, old)
            opt.step()                                                              # line 10
            stale = g_t
            history.append([p.detach().clone() for p in net.parameters()])
    return history


def reference_sam(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    epochs: list[list[tuple[Tensor, Tensor]]],
    rho: float,
    accumulate: int = 1,
) -> list[list[Tensor]]:
    """SAM (Foret et al.) serially: ascent and descent on the same (micro-)batch."""
    history = []
    for batches in epochs:
        steps = [batches[i : i + accumulate] for i in range(0, len(batches), accumulate)]
        for micro in steps:
            opt.zero_grad()
            for batch in micro:
                g = _grads(net, batch)
                old = _perturb(net, g, rho)
                (_loss(net, batch) / accumulate).backward()
                _restore(net, old)
            opt.step()
            history.append([p.detach().clone() for p in net.parameters()])
    return history


def reference_sgd(net, opt, epochs, accumulate: int = 1) -> list[list[Tensor]]:
    history = []
    for batches in epochs:
        for i in range(0, len(batches), accumulate):
            opt.zero_grad()
            for batch in batches[i : i + accumulate]:
                (_loss(net, batch) / accumulate).backward()
            opt.step()
            history.append([p.detach().clone() for p in net.parameters()])
    return history


def trainer(strategy, tmp_path=None, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path) if tmp_path is not None else None,
    )
    defaults.update(kwargs)
    return L.Trainer(strategy=strategy, **defaults)


def assert_trajectories_close(got: list[list[Tensor]], want: list[list[Tensor]], atol: float = 1e-10) -> None:
    assert len(got) == len(want), f"{len(got)} steps recorded, reference has {len(want)}"
    for t, (a, b) in enumerate(zip(got, want)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype == torch.float64
            err = (x - y).abs().max().item()
            assert err <= atol, f"step {t}, parameter {i}: max |diff| = {err:.3e} > {atol}"


class FiniteOnlyClassifier(TinyClassifier):
    """A module whose training_step drops non-finite samples while its ascent_loss does not.

    The situation of issue 10: data that only the ascent sees can poison it.
    """

    def training_step(self, batch, batch_idx):
        x, y = batch
        keep = torch.isfinite(x).all(dim=1)
        return F.cross_entropy(self(x[keep]), y[keep])

    def ascent_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)


class ManualClassifier(TinyClassifier):
    """Manual optimization: one optimizer step per training_step; the ascent comes from ascent_loss."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def ascent_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = self.ascent_loss(batch)
        self.manual_backward(loss)
        opt.step()
        return loss


def make_data_with_nan(n: int = 256, bad: int = 1, dtype: torch.dtype = torch.float32) -> TensorDataset:
    """``n`` samples of which sample ``bad`` (within the first b' of the first batch) is all NaN."""
    ds = make_data(n, dtype=dtype)
    x, y = ds.tensors
    x = x.clone()
    x[bad] = float("nan")
    return TensorDataset(x, y)
