"""The SAE architectures a build can train, behind one small interface.

An architecture turns the build's settings into its own training settings, names the SAEs it
trains, and trains one on cached activations, returning a SAELens SAE (which the harvest, the
store and every analysis read like any SAE a user brings). `BuildConfig.architecture` picks one
from `ARCHITECTURES`; its settings are the build flags its `settings` reads.

Two today: `topk` (trained by the atlas's own loop) and `batchtopk` (trained by SAELens's
trainer). Both read the build's --d-sae, --k, --epochs, --train-batch and --lr. Adding one
(JumpReLU, Matryoshka, ...) is a class here with the three methods and an entry in
`ARCHITECTURES`, plus a value in `BuildConfig.architecture`'s Literal; nothing else in the
build names an architecture.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch
from jaxtyping import Float
from sae_lens import SAE

from atlas.errors import AtlasError
from atlas.models import HookPoint
from atlas.saes import TrainSettings, train_topk

if TYPE_CHECKING:
    from atlas.config import BuildConfig

log = logging.getLogger(__name__)


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
        return f"{self.name}{config.d_sae}-k{config.k}"

    def train(self, acts: Float[torch.Tensor, "n d"], settings: TrainSettings, *,
              hook: HookPoint, model_name: str, device: torch.device | str,
              desc: str) -> SAE:
        return train_topk(acts, settings, hook=hook, model_name=model_name, device=device,
                          desc=desc)


class BatchTopK(TopK):
    """BatchTopK SAEs (Bussmann et al. 2024): the batch's k x batch largest activations are kept,
    so each token has k active latents on average. Trained through SAELens's own trainer
    (`SAETrainer` on `BatchTopKTrainingSAE`, with its AuxK loss and SAELens's input-norm
    scaling, folded into the weights at the end) and saved as SAELens saves BatchTopK SAEs for
    inference: a JumpReLU SAE whose threshold is the batch threshold learnt in training.
    Settings: --d-sae, --k (the mean L0), --epochs, --train-batch, --lr."""

    name = "batchtopk"  # settings and SAE names as TopK's

    def train(self, acts: Float[torch.Tensor, "n d"], settings: TrainSettings, *,
              hook: HookPoint, model_name: str, device: torch.device | str,
              desc: str) -> SAE:
        from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.sae import SAEMetadata
        from sae_lens.training.sae_trainer import SAETrainer

        n, d = acts.shape
        steps = settings.epochs * math.ceil(n / settings.batch_size)
        gen = torch.Generator().manual_seed(settings.seed)

        def batches() -> Iterator[torch.Tensor]:
            while True:  # the trainer stops after `steps` batches (and its norm estimate)
                for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
                    yield acts[idx].to(device, torch.float32)

        cfg = BatchTopKTrainingSAEConfig(
            d_in=d, d_sae=settings.d_sae, k=float(settings.k), dtype="float32",
            device=str(device), normalize_activations="expected_average_only_in",
            metadata=SAEMetadata(model_name=model_name, hook_name=hook.name,
                                 hook_layer=hook.layer, trained_by="feature-atlas"))
        trainer_cfg = SAETrainerConfig(
            total_training_samples=steps * settings.batch_size,
            train_batch_size_samples=settings.batch_size, lr=settings.lr,
            lr_end=settings.lr / 10, lr_decay_steps=steps // 5, device=str(device),
            n_batches_for_norm_estimate=min(50, steps))
        log.info("%s: BatchTopK through SAELens's trainer, %d steps", desc, steps)
        with torch.random.fork_rng(devices=[]):  # the seed, without touching the caller's RNG
            torch.manual_seed(settings.seed)
            training = BatchTopKTrainingSAE(cfg)
            SAETrainer(trainer_cfg, training, batches()).fit()
        with tempfile.TemporaryDirectory() as folder:
            training.save_inference_model(folder)
            sae = SAE.load_from_disk(folder, device=str(device))
        with torch.no_grad():
            sample = acts[torch.randperm(n, generator=gen)[:4096]].to(device, torch.float32)
            l0 = float((sae.encode(sample) > 0).sum(-1).float().mean())
        if not 0.5 * settings.k <= l0 <= 1.5 * settings.k:
            log.warning("%s: the learnt batch threshold gives L0 %.1f on training tokens "
                        "against k = %d; its running average settles over more steps (raise "
                        "--epochs)", desc, l0, settings.k)
        return sae.eval()


ARCHITECTURES: dict[str, Architecture] = {"topk": TopK(), "batchtopk": BatchTopK()}


def architecture(name: str) -> Architecture:
    """The registered architecture called `name`."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise AtlasError(f"no SAE architecture {name!r} to train; choose one of "
                         f"{', '.join(ARCHITECTURES)} (or bring SAEs with --sae-path / "
                         "--sae-release)") from None
