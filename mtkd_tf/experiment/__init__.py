"""The paper's procedure end to end: `Experiment` (a list of stages), where it writes
(`ExperimentLayout`), its data (`ExperimentData`), and the single-model modes (`modes`)."""

from mtkd_tf.experiment import modes
from mtkd_tf.experiment.data import ExperimentData
from mtkd_tf.experiment.experiment import Experiment
from mtkd_tf.experiment.layout import ExperimentLayout, run_row
from mtkd_tf.experiment.stages import Stage

__all__ = ["Experiment", "ExperimentData", "ExperimentLayout", "Stage", "modes", "run_row"]
