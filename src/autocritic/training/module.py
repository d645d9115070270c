"""CriticModule: the LightningModule shared by both phases. What is frozen is decided before it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import lightning as L
import torch
from torch import nn

from autocritic.errors import AutocriticError
from autocritic.model.backbone import unwrap
from autocritic.model.critic import response_positions
from autocritic.training.metrics import make_metrics, update_metrics
from autocritic.training.objectives import (
    ObjectiveSettings,
    critic_loss,
    lm_loss,
    next_token_loss,
    token_value_loss,
)


class NonFiniteLossError(AutocriticError):
    pass


@dataclass
class OptimSettings:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (bitsandbytes)
    schedule: str = "constant"  # after the warmup: "constant" | "cosine" (to 0 at the last step)


class CriticModule(L.LightningModule):
    def __init__(
        self,
        critic: nn.Module,
        objective: ObjectiveSettings,
        optim: OptimSettings,
        backbone_frozen: bool,
        eval_kind: str | None = None,
    ):
        """`eval_kind`: the loss and metrics of the validation and test splits when their rows are of another kind
        than the training rows (pairwise training, pointwise evaluation: "bce"); None, the objective's."""
        super().__init__()
        self.critic = critic  # a CriticModel, or a PeftModel around one
        self.objective = objective
        self.optim = optim
        self.backbone_frozen = backbone_frozen
        self.kinds = {"train": objective.kind, "val": eval_kind or objective.kind, "test": eval_kind or objective.kind}
        self.metrics = nn.ModuleDict({f"{split}_": make_metrics(kind, split) for split, kind in self.kinds.items()})
        # Checkpoints hold trainable weights only (see on_save_checkpoint), so loading is not strict.
        self.strict_loading = False

    def on_train_epoch_start(self) -> None:
        # Lightning restores each submodule's own mode; a frozen backbone must stay in eval (dropout off).
        if self.backbone_frozen:
            unwrap(self.critic).backbone.eval()

    def score_batch(self, batch: dict) -> torch.Tensor:
        """The critic's scores of a batch, computed as in training (features, shared prompts or plain rows)."""
        return self.forward_batch(batch)[0]

    def forward_batch(self, batch: dict, want_logits: bool = False, want_values: bool = False):
        """(scores, members' scores, the forward's output or None for cached features) of a batch of any layout."""
        if "features" in batch:
            members = unwrap(self.critic).score_features(batch["features"], members=True)
            return members.mean(-1), members, None
        if "prefix_ids" in batch:  # rows that share prompts (data.share_prompts): each prompt runs once
            out = unwrap(self.critic).forward_shared(
                batch["prefix_ids"],
                batch["prefix_mask"],
                batch["answer_ids"],
                batch["answer_mask"],
                batch["repeat"],
                batch["response"],
                return_values=want_values,
                return_logits=want_logits,
                return_members=True,
            )
        else:
            out = self.critic(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                prompt_lengths=batch["prompt_lengths"],
                return_logits=want_logits,
                return_values=want_values,
                return_members=True,
            )
        return out.score, out.members, out

    def step(self, batch: dict, split: str) -> torch.Tensor:
        target = batch["target"]
        lm_term = value_term = None
        want_logits = self.objective.lm_weight > 0 and not self.backbone_frozen
        want_values = self.objective.value_weight > 0
        # Each member of the head (a plain head is one) fits the labels on its own: the loss is the mean of the
        # members' losses; the score is their mean.
        scores, members, out = self.forward_batch(batch, want_logits, want_values)
        if out is not None:
            if "prefix_ids" in batch:
                logits, labels, response = out.logits, batch["answer_labels"], batch["response"]
            else:
                logits = None if out.logits is None else out.logits[:, :-1]  # position t predicts token t + 1
                labels = batch["lm_labels"][:, 1:]
                response = response_positions(batch["attention_mask"], batch["prompt_lengths"])
            if want_logits:
                lm_term = next_token_loss(logits, labels)
            if want_values:
                value_term = token_value_loss(out.values, response, target)
        kind = self.kinds[split]
        objective = self.objective if kind == self.objective.kind else replace(self.objective, kind=kind)
        loss = critic_loss(objective, members, target)
        batch_size = target.shape[0]
        if lm_term is not None:
            self.log(f"{split}/lm_loss", lm_term, batch_size=batch_size)
            loss = loss + self.objective.lm_weight * lm_term
        if value_term is not None:
            self.log(f"{split}/value_loss", value_term, batch_size=batch_size)
            loss = loss + self.objective.value_weight * value_term
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the {split} loss became {loss.item()} at step {self.global_step}: training stopped. Lower the "
                "learning rate (phase.lr), enable gradient clipping (trainer.gradient_clip_val), or use precision=32;"
            )
        metrics = self.metrics[f"{split}_"]
        update_metrics(metrics, kind, scores, target, batch.get("group"))
        self.log(f"{split}/loss", loss, prog_bar=split != "test", batch_size=batch_size, sync_dist=split != "train")
        if split != "train":
            self.log(f"{split}/score_mean", scores.detach().mean(), batch_size=batch_size, sync_dist=True)
            spread = scores.detach().max() - scores.detach().min()  # 0 in every batch: the head gives one score
            self.log(f"{split}/score_spread", spread, batch_size=batch_size, sync_dist=True, reduce_fx="max")
        return loss

    def log_epoch_metrics(self, split: str) -> None:
        # Computed once per epoch: logging metric objects at every step costs more than a head step on features.
        metrics = self.metrics[f"{split}_"]
        if metrics[next(iter(metrics.keys()))].update_count:
            values = metrics.compute()
            # Undefined when no prompt has both a right and a wrong answer: not logged rather than NaN.
            if "within_auroc" in values and torch.isnan(values["within_auroc"]):
                del values["within_auroc"]
            self.log_dict({f"{split}/{k}": v for k, v in values.items()}, sync_dist=True)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "replay" not in batch:
            return self.step(batch, "train")
        replay = batch["replay"]
        logits = unwrap(self.critic).backbone(
            input_ids=replay["input_ids"], attention_mask=replay["attention_mask"]
        ).logits
        replay_term = lm_loss(logits, replay["lm_labels"])
        self.log("train/replay_loss", replay_term, batch_size=replay["input_ids"].shape[0])
        return self.step(batch["critic"], "train") + self.objective.replay_weight * replay_term

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.step(batch, "test")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's FSDP precision refuses norm clipping (it holds no reference to the root module); the norm
        # over every rank's shards is the root FSDP module's own `clip_grad_norm_`.
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(root, FullyShardedDataParallel):
            root.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.critic.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.optim.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            optimizer = bnb.optim.AdamW8bit(groups, lr=self.optim.lr)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.optim.lr)
        if not self.optim.warmup_steps and self.optim.schedule == "constant":
            return optimizer
        warmup, total = self.optim.warmup_steps, self.trainer.estimated_stepping_batches
        cosine = self.optim.schedule == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A frozen 7B backbone must not be copied into every checkpoint: keep trainable weights and buffers only.
        trainable = {f"critic.{n}" for n, p in self.critic.named_parameters() if p.requires_grad}
        frozen = {f"critic.{n}" for n, p in self.critic.named_parameters() if not p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable or k not in frozen
        }
        # Dropout draws from the global RNG, which Lightning does not checkpoint: a resumed run continues its stream.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is not None:
            torch.set_rng_state(state["torch"])
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])
