"""The Distiller's loss terms: one object per additive part of its per-example loss.

`Distiller.compute_losses` sums its terms' per-example values in list order (hard, soft, hidden
by default). A term carries its own weight and settings, checks them when made (`validate`) and
against the models when the Distiller takes it (`bind`), and serialises as `get_config`. A
registry maps each name to its class, as TextBrewer's loss registry does, so a new term is one
class and a `@register_loss_term("name")`:

>>> @register_loss_term("zero")
... class ZeroLoss(LossTerm):
...     def __call__(self, batch):
...         return tf.zeros_like(batch.y["label"])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import keras
import tensorflow as tf

from mtkd_tf.data.tasks import CLASSIFICATION, RANKING
from mtkd_tf.distill.checks import ALPHA_SCHEDULES, check_alpha, check_choice, check_temperature
from mtkd_tf.errors import ConfigError
from mtkd_tf.models.losses import SOFT_LOSSES, hard_loss, mix_weights, soft_loss, soften
from mtkd_tf.models.train_step import per_task

_REGISTRY: dict[str, type[LossTerm]] = {}


@dataclasses.dataclass
class Batch:
    """One batch as the loss terms see it: the inputs, the student's and online teachers' outputs,
    and `shared` values that several terms need, computed once per trace (`Batch.once`)."""

    distiller: keras.Model
    features: dict[str, tf.Tensor]
    task_id: tf.Tensor
    y: dict[str, tf.Tensor]
    training: bool
    outputs: dict[str, tf.Tensor]
    teacher_outputs: list[dict[str, tf.Tensor]] | None = None  # the teachers' features models' outputs
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `key` is asked for in this batch, its value after that."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def mix(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example weights of the hard and soft terms: the soft term's alpha split, or the
        label mask alone (no soft term)."""
        return self.once("mix", lambda: self.distiller.mix_weights(self))


class LossTerm:
    """One additive term of the Distiller's loss, per example.

    Subclasses set their settings in `__init__` (checked there, by `validate`), implement
    `__call__(batch)` returning one float32 loss per example, already weighted, and register
    with `register_loss_term`. `name` (the registry's) names the logged part, `<name>_loss`.
    """

    name: ClassVar[str] = ""
    logged_per_task: ClassVar[bool] = False  # also logged per task as `<task>_<name>`
    needs_features: ClassVar[bool] = False  # reads [CLS] vectors: the Distiller runs features models

    def validate(self) -> None:
        """Checks the term's own settings; raises ConfigError naming the setting."""

    def bind(self, distiller: keras.Model) -> None:
        """Checks the term against the Distiller's student and teachers and creates its variables."""

    def layers(self) -> dict[str, keras.layers.Layer]:
        """Layers with variables, by the Distiller attribute that tracks them (checkpoint paths)."""
        return {}

    def __call__(self, batch: Batch) -> tf.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LossTerm:
        return cls(**config)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


def register_loss_term(name: str) -> Callable[[type[LossTerm]], type[LossTerm]]:
    """Class decorator: registers a `LossTerm` subclass under `name` (and as Keras-serializable)."""

    def register(cls: type[LossTerm]) -> type[LossTerm]:
        if not (isinstance(cls, type) and issubclass(cls, LossTerm)):
            raise TypeError(f"loss term {name!r}: {cls!r} is not a LossTerm subclass")
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"loss term {name!r} is already registered as {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return keras.saving.register_keras_serializable(package="mtkd_tf.loss_terms", name=name)(cls)

    return register


def get_loss_term(name: str) -> type[LossTerm]:
    """The class registered as `name`; a ConfigError lists the registered names otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown loss term {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def serialize_loss_term(term: LossTerm) -> dict[str, Any]:
    """`{"name": registered name, "config": get_config()}`, what `deserialize_loss_term` reads."""
    return {"name": term.name, "config": term.get_config()}


def deserialize_loss_term(config: Mapping[str, Any]) -> LossTerm:
    """The term `serialize_loss_term` described, made by its registered class."""
    return get_loss_term(config["name"]).from_config(dict(config.get("config", {})))


# --- the three terms of the paper's student (and the [CLS] hidden-state loss) -------------------


@register_loss_term("hard")
class HardLoss(LossTerm):
    """The task loss on gold labels (`losses.hard_loss`), weighted per example by what the soft
    term leaves: 1 - alpha with a teacher, 1 without, 0 on unlabelled rows."""

    logged_per_task = True

    def __call__(self, batch: Batch) -> tf.Tensor:
        weight = batch.mix()[0]
        outputs, label = batch.outputs, batch.y["label"]
        loss = per_task(
            batch.distiller.student.tasks, batch.task_id, lambda i, task: hard_loss(task, outputs[task.name], label)
        )
        return loss * weight


@register_loss_term("soft")
class SoftLoss(LossTerm):
    """The distillation loss against the teachers' targets (`losses.soft_loss`), weighted by alpha.

    Args:
        alpha: weight of the soft loss for tasks with a teacher (paper: 0.5); the hard loss gets 1 - alpha.
        task_alpha: per-task overrides of alpha.
        temperature: T of the soft targets and of the student's softmax (paper: 1).
        kind: "ce" (paper), "kl" or "mse" (on log-probabilities); regression uses MSE.
        alpha_schedule: "constant", or "anneal": alpha from 1 at the first step to 0 at the last.
        total_steps: the run's training steps (what "anneal" counts down).
    """

    logged_per_task = True

    def __init__(
        self,
        alpha: float = 0.5,
        task_alpha: Mapping[str, float] | None = None,
        temperature: float = 1.0,
        kind: str = "ce",
        alpha_schedule: str = "constant",
        total_steps: int | None = None,
    ):
        self.alpha = alpha
        self.task_alpha = dict(task_alpha or {})
        self.temperature = temperature
        self.kind = kind
        self.alpha_schedule = alpha_schedule
        self.total_steps = total_steps
        self.validate()

    def validate(self) -> None:
        check_alpha(self.alpha, self.task_alpha)
        check_temperature(self.temperature)
        check_choice("soft_loss", self.kind, SOFT_LOSSES)
        check_choice("alpha_schedule", self.alpha_schedule, ALPHA_SCHEDULES)

    def bind(self, distiller: keras.Model) -> None:
        names = [task.name for task in distiller.student.tasks]
        unknown = sorted(set(self.task_alpha) - set(names))
        if unknown:
            raise ConfigError(f"task_alpha names task(s) the student lacks: {', '.join(unknown)}", "task_alpha")
        if self.alpha_schedule == "anneal" and not (self.total_steps or 0) > 0:
            raise ConfigError("alpha_schedule=anneal needs the number of training steps", "alpha_schedule")
        self.alphas = tf.constant([self.task_alpha.get(name, self.alpha) for name in names], tf.float32)

    def current_alpha(self, task_id: tf.Tensor, distiller: keras.Model) -> tf.Tensor:
        """The soft weight of this step: the task's alpha, or with `anneal` 1 - step / (steps - 1)."""
        if self.alpha_schedule == "constant":
            return tf.gather(self.alphas, task_id)
        progress = tf.cast(distiller.optimizer.iterations, tf.float32) / float(max(self.total_steps - 1, 1))
        return tf.clip_by_value(1.0 - progress, 0.0, 1.0)

    def mix_weights(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example weights of the hard and soft losses (`losses.mix_weights` at this step's alpha)."""
        soft_mask = self.targets(batch)[1]
        y = batch.y
        label_mask = y.get("label_mask", tf.ones_like(y["label"]))
        alpha = tf.fill(tf.shape(y["label"]), self.current_alpha(batch.task_id, batch.distiller))
        return mix_weights(alpha, label_mask, soft_mask)

    def targets(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        """Soft targets and their mask: from online teachers, or cached in the batch."""

        def compute():
            distiller, y = batch.distiller, batch.y
            has_teacher = tf.gather(distiller.has_teacher, batch.task_id)
            if distiller.teachers:
                return self.teacher_targets(batch), tf.fill(tf.shape(y["label"]), has_teacher)
            return y["soft"], y["soft_mask"] * has_teacher

        return batch.once("soft_targets", compute)

    def teacher_targets(self, batch: Batch) -> tf.Tensor:
        """Online targets of the batch's task: mean teacher probabilities at T (ranking: of each
        candidate within its question), or mean score."""
        distiller, temperature, width = batch.distiller, self.temperature, batch.distiller.width
        teacher_outputs = batch.teacher_outputs
        if teacher_outputs is None:
            teacher_outputs = [teacher(batch.features, training=False) for teacher in distiller.teachers]

        def target(i, task):
            if task.type == CLASSIFICATION:
                probs = [tf.exp(soften(out[task.name], temperature)) for out in teacher_outputs]
            elif task.type == RANKING:  # each question's candidate distribution, as the cached targets
                probs = [
                    tf.reshape(tf.nn.softmax(tf.reshape(out[task.name], [-1, task.group_size]) / temperature), [-1, 1])
                    for out in teacher_outputs
                ]
            else:
                probs = [out[task.name][:, None] for out in teacher_outputs]
            mean = tf.add_n(probs) / len(probs)
            return tf.pad(mean, [[0, 0], [0, width - mean.shape[-1]]])

        return tf.stop_gradient(per_task(distiller.student.tasks, batch.task_id, target))

    def __call__(self, batch: Batch) -> tf.Tensor:
        target = self.targets(batch)[0]
        weight = batch.mix()[1]
        outputs = batch.outputs

        def loss(i, task):
            task_target = target[:, : task.num_classes] if task.type == CLASSIFICATION else target[:, 0]
            return soft_loss(task, outputs[task.name], task_target, self.temperature, self.kind)

        return per_task(batch.distiller.student.tasks, batch.task_id, loss) * weight

    def get_config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "task_alpha": dict(self.task_alpha),
            "temperature": self.temperature,
            "kind": self.kind,
            "alpha_schedule": self.alpha_schedule,
            "total_steps": self.total_steps,
        }


@register_loss_term("hidden")
class HiddenStateLoss(LossTerm):
    """`weight` x MSE between the projected student [CLS] vector and the teachers' mean one
    (online teachers only; lets a smaller student match a wider teacher's representation)."""

    needs_features = True

    def __init__(self, weight: float = 1.0):
        self.weight = weight
        self.validate()

    def validate(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"hidden_loss_weight must be >= 0, got {self.weight}", "hidden_loss_weight")

    def bind(self, distiller: keras.Model) -> None:
        if not distiller.teachers:
            raise ConfigError("the hidden-state loss needs online teachers", "hidden_loss_weight")
        self.projection = keras.layers.Dense(distiller.teachers[0].encoder.hidden_dim, name="hidden_projection")
        # built now, so every variable exists before the first trace (training.fit builds the optimizer then)
        self.projection.build((None, distiller.student.encoder.hidden_dim))

    def layers(self) -> dict[str, keras.layers.Layer]:
        return {"projection": self.projection}

    def __call__(self, batch: Batch) -> tf.Tensor:
        projected = self.projection(batch.outputs["pooled_output"])
        teacher_outputs = batch.teacher_outputs
        teacher_pooled = tf.add_n([t["pooled_output"] for t in teacher_outputs]) / len(teacher_outputs)
        return self.weight * tf.reduce_mean(tf.square(projected - tf.stop_gradient(teacher_pooled)), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {"weight": self.weight}


def loss_terms(settings: Any, total_steps: int | None = None) -> list[LossTerm]:
    """The terms a `DistillationConfig` (`settings`) describes: hard, soft and (with a weight) hidden."""
    terms: list[LossTerm] = [
        HardLoss(),
        SoftLoss(
            alpha=settings.alpha,
            task_alpha=settings.task_alpha,
            temperature=settings.temperature,
            kind=settings.soft_loss,
            alpha_schedule=settings.alpha_schedule,
            total_steps=total_steps,
        ),
    ]
    if settings.hidden_loss_weight:
        terms.append(HiddenStateLoss(settings.hidden_loss_weight))
    return terms
