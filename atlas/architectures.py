"""The SAE architectures a build can train, behind one small interface.

An architecture turns the build's settings into its own training settings, names the SAEs it
trains, and trains one on cached activations, returning a SAELens SAE (which the harvest, the
store and every analysis read like any SAE a user brings). `BuildConfig.architecture` picks one
from `ARCHITECTURES`; its settings are the build flags its `settings` reads.

Adding one (BatchTopK, JumpReLU, ...) is a class here with the three methods and an entry in
`ARCHITECTURES`, plus a value in `BuildConfig.architecture`'s Literal; nothing else in the
build names an architecture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from jaxtyping import Float
from sae_lens import SAE

from atlas.errors import AtlasError
from atlas.models import HookPoint
from atlas.saes import TrainSettings, train_topk

if TYPE_CHECKING:
    from atlas.config import BuildConfig


class Architecture(Protocol):
    """What the build asks of a trainable SAE architecture."""

    name: str

    def settings(self, config: BuildConfig, seed: int) -> Any:
        """This architecture's training settings from the build's (seeded per layer)."""
        ...

    def sae_name(self, config: BuildConfig) -> str:
        """The part of a trained SAE's id that names its architecture and size."""
        ...

    def train(self, acts: Float[torch.Tensor, "n d"], settings: Any, *, hook: HookPoint,
              model_name: str, device: torch.device | str, desc: str) -> SAE:
        """Train on (training-block) activations; a SAELens SAE that reads raw residuals."""
        ...


class TopK:
    """TopK SAEs (Gao et al. 2024) with an AuxK loss that revives dead latents, trained here
    (`atlas.saes.train_topk`) and saved as SAELens `TopKSAE`. Settings: --d-sae, --k,
    --epochs, --train-batch, --lr."""

    name = "topk"

    def settings(self, config: BuildConfig, seed: int) -> TrainSettings:
        return TrainSettings(d_sae=config.d_sae, k=config.k, epochs=config.epochs,
                             batch_size=config.train_batch, lr=config.lr, seed=seed)

    def sae_name(self, config: BuildConfig) -> str:
        return f"topk{config.d_sae}-k{config.k}"

    def train(self, acts: Float[torch.Tensor, "n d"], settings: TrainSettings, *,
              hook: HookPoint, model_name: str, device: torch.device | str,
              desc: str) -> SAE:
        return train_topk(acts, settings, hook=hook, model_name=model_name, device=device,
                          desc=desc)


ARCHITECTURES: dict[str, Architecture] = {"topk": TopK()}


def architecture(name: str) -> Architecture:
    """The registered architecture called `name`."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise AtlasError(f"no SAE architecture {name!r} to train; choose one of "
                         f"{', '.join(ARCHITECTURES)} (or bring SAEs with --sae-path / "
                         "--sae-release)") from None
