"""`[distill]`: hybrid edge-cloud distillation, off by default (docs/distill.md).

Imports pydantic only (no torch), so a bad setting fails before the model code loads. The
teacher ("cloud") model is any `[model]`-style model; its default is the embedded MiniLM with
the verbose template, a LoRA rank of 16 and room for verbose prompts (128 tokens).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedllm_core.model_settings import ModelSettings
from fedllm_core.prompts import get_template
from fedllm_core.settings import FrozenSettings
from fedllm_core.train_settings import TrainSettings

# Which rows of the server's split a use may read; "test" is not a choice on purpose: the test
# captures are what both tiers are scored on.
Rows = Literal["validation", "train", "train_and_validation"]


def _teacher_model() -> ModelSettings:
    return ModelSettings.model_validate({"lora_r": 16, "lora_alpha": 32, "max_length": 128})


def _teacher_train() -> TrainSettings:
    return TrainSettings.model_validate({"lr": 3e-3})  # the experiment's CPU-budget rate


class DistillSettings(FrozenSettings):
    """A cloud teacher trained once, distilled into every k-th global edge model."""

    enabled: bool = False
    model: ModelSettings = Field(default_factory=_teacher_model)
    template: str = "verbose@1"  # the teacher's prompt template (name or name@version)
    # Labelled rows the teacher trains on; "validation" = the server's own captures.
    teacher_rows: Rows = "validation"
    teacher_steps: int = Field(default=200, ge=1, description="teacher optimizer steps")
    teacher_train: TrainSettings = Field(default_factory=_teacher_train)
    # Flows the student is distilled on, labels dropped; deduplicated by their two texts.
    # "validation" (the server's own captures) by default: the clients' rows are flows an edge
    # site would have to forward to the cloud, and raw traffic stays at the edge unless chosen.
    transfer_rows: Rows = "validation"
    transfer_max: int = Field(default=1000, ge=1, description="seeded cap on transfer flows")
    every_versions: int = Field(default=1, ge=1, description="distil every k-th version")
    steps: int = Field(default=20, ge=1, description="KD optimizer steps per distillation")
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    temperature: float = Field(default=2.0, gt=0, le=100)
    seed: int = 0  # teacher LoRA draw, data orders and the transfer cap

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        get_template(value)  # raises ValueError naming the known templates
        return value

    @model_validator(mode="after")
    def _prompt_fits(self) -> DistillSettings:
        budget = get_template(self.template).max_tokens
        if self.model.max_length < budget:  # truncation would drop the text's last fields
            raise ValueError(
                f"distill.model.max_length {self.model.max_length} is shorter than the "
                f"{self.template} template's {budget} tokens"
            )
        return self
