"""The layout of a training batch: the one contract between batching, models and losses.

Every training batch is `(x, y)` of ONE task (task-homogeneous, MT-DNN Algorithm 1):

- `x` (`Inputs`): the encoder's `token_ids`, `segment_ids`, `padding_mask`
  (int32 `[batch, length]`, length padded per batch) and `task_id` (int32 `[batch]`, every
  entry the index of the batch's task among the model's heads).
- `y` (`Targets`): `label` (float32 `[batch]`: class id, score, or ranking relevance);
  when distilling also `soft` (float32 `[batch, width]`: the teachers' probabilities, zero
  padded to the widest head, or the mean score in column 0), `soft_mask` (1 where the task
  has soft targets) and `label_mask` (0 for unlabelled text that trains on `soft` alone).

`mtkd_tf.training.train.training_data` makes such batches; `MultiTaskTrainStep` consumes them.
"""

from __future__ import annotations

from typing import TypedDict

import tensorflow as tf

FEATURES = ("token_ids", "segment_ids", "padding_mask")


class Inputs(TypedDict):
    token_ids: tf.Tensor
    segment_ids: tf.Tensor
    padding_mask: tf.Tensor
    task_id: tf.Tensor


class _DistillationTargets(TypedDict, total=False):
    soft: tf.Tensor
    soft_mask: tf.Tensor
    label_mask: tf.Tensor


class Targets(_DistillationTargets):
    label: tf.Tensor
