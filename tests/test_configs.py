"""The committed experiments stay reproducible from their configs: each one's configs/<name>.cfg
resolves today to the config its committed report recorded (docs/results/<name>/report.json).

A change to configs/protocol.cfg (the settings the three share), to an experiment's own file,
or to a default the files leave unset fails here, naming the setting.
"""

import json
import os

import pytest
from conftest import ROOT

from mtkd_tf.config import ExperimentConfig

EXPERIMENTS = ("paper_claims", "small_student", "unlabelled")

# Settings given on the run's command line after the flagfile (docs/results.md gives each
# command): paths on the machine that ran it ($HOME/mtkd-runs/...), not part of the protocol.
COMMAND_LINE = {
    "paper_claims": {"runtime.model_dir"},
    "small_student": {"runtime.model_dir", "teachers.teacher_dir", "distillation.soft_labels_dir"},
    "unlabelled": {"runtime.model_dir"},
}


# Settings added after the runs whose default is not what the runs did: the value that reproduces
# them (configs/protocol.cfg sets it). Dev-based selection and the teacher check (issue #40) are on
# by default since.
BEFORE_THE_SETTING = {
    "training.select_best_on_dev": False,
    "teachers.teacher_check": "off",
    "distillation.bootstrap_resamples": 1000,
}


def _flat(config: dict) -> dict[str, object]:
    """{"group.field": value} of a `to_dict()` config, as JSON stores it (tuples become lists)."""
    return {
        f"{group}.{name}": value
        for group, fields in json.loads(json.dumps(config)).items()
        for name, value in fields.items()
    }


def differences(name: str, recorded: dict, config_file: str) -> list[str]:
    """How the config `config_file` resolves to differs from the `recorded` one: a setting of
    either that the other lacks or holds differently. Settings added to ExperimentConfig after
    the run are not in the record: they must be at their defaults, or where the default is new
    behaviour, at the value that reproduces the run (`BEFORE_THE_SETTING`)."""
    recorded = _flat(recorded)
    today = _flat(ExperimentConfig.from_flagfile(config_file).to_dict())
    defaults = _flat(ExperimentConfig().to_dict())
    found = []
    for setting in sorted(set(recorded) | set(today)):
        if setting in COMMAND_LINE[name]:
            continue
        if setting not in today:
            found.append(f"{setting}: recorded {recorded[setting]!r}, no longer a setting")
        elif setting not in recorded:
            then = BEFORE_THE_SETTING.get(setting, defaults[setting])
            if today[setting] != then:
                found.append(f"{setting}: added after the run, which did what {then!r} does; now {today[setting]!r}")
        elif today[setting] != recorded[setting]:
            found.append(f"{setting}: recorded {recorded[setting]!r}, now {today[setting]!r}")
    return found


def _recorded(name: str) -> dict:
    with open(os.path.join(ROOT, "docs", "results", name, "report.json"), encoding="utf-8") as handle:
        return json.load(handle)["config"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_config_resolves_to_what_its_report_recorded(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs include each other by paths relative to the checkout
    assert differences(name, _recorded(name), f"configs/{name}.cfg") == []


def test_the_experiments_do_not_include_the_quickstart():
    for name in EXPERIMENTS:
        with open(os.path.join(ROOT, "configs", f"{name}.cfg"), encoding="utf-8") as handle:
            included = [line.strip() for line in handle if line.startswith("--flagfile")]
        assert included == ["--flagfile=configs/protocol.cfg"], name
    with open(os.path.join(ROOT, "configs", "protocol.cfg"), encoding="utf-8") as handle:
        assert not [line for line in handle if line.startswith("--flagfile")]


def test_a_changed_protocol_value_is_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with open("configs/protocol.cfg", encoding="utf-8") as handle:
        protocol = handle.read()
    assert "--learning_rate=1e-4\n" in protocol
    changed = tmp_path / "protocol.cfg"
    changed.write_text(protocol.replace("--learning_rate=1e-4\n", "--learning_rate=2e-4\n"), encoding="utf-8")
    with open("configs/unlabelled.cfg", encoding="utf-8") as handle:
        experiment = handle.read().replace("--flagfile=configs/protocol.cfg", f"--flagfile={changed}")
    (tmp_path / "unlabelled.cfg").write_text(experiment, encoding="utf-8")
    assert differences("unlabelled", _recorded("unlabelled"), str(tmp_path / "unlabelled.cfg")) == [
        "training.learning_rate: recorded 0.0001, now 0.0002"
    ]
