"""The claims' Holm families (`--primary_claims`), fixed before a run and refused when changed after it,
and the bootstrap's resample count, which a rebuild reads from the run's evidence."""

import json
import os

import numpy as np
import pytest
from conftest import run_cli
from test_report import _evidence, _run

from mtkd_tf.config import ExperimentConfig
from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment import modes, significance
from mtkd_tf.experiment import report as report_lib
from mtkd_tf.experiment.report import ALL, HOLDS, INPUTS, NOT_SIGNIFICANT, PRIMARY, SECONDARY
from mtkd_tf.experiment.significance import REGISTERED_RESAMPLES, holm


def _rows(student, baseline):
    """Members, the ensemble and 3 seeds of student and baseline scoring the given values on tasks t and u."""
    found = {f"member_{k}": {"t": m, "u": m} for k, m in enumerate((0.74, 0.76, 0.75))}
    found["ensemble"] = {"t": 0.76, "u": 0.76}
    for name, values in (("baseline", baseline), ("student", student)):
        for run, value in enumerate(values):
            found[name if run == 0 else f"{name}_s{run + 1}"] = {"t": value, "u": value}
    return found


def _one(found, key, task="t"):
    (claim,) = [c for c in found if c["key"] == key and c["task"] == task]
    return claim


def test_holm_runs_within_the_primary_family_and_separately_over_the_secondary_claims():
    evidence = _evidence(_run({}, student=0.80, baseline=0.70, ensemble=0.84), teacher_tasks=("t", "u"))
    evidence.primary_claims = ["student_vs_baseline", "kept_share"]
    found, _ = report_lib.claims(evidence)
    assert {(c["key"], c["task"]) for c in found if c["family"] == PRIMARY} == {
        ("student_vs_baseline", "t"),
        ("student_vs_baseline", "u"),
        ("kept_share", "t"),
        ("kept_share", "u"),
    }
    assert {c["family"] for c in found} == {PRIMARY, SECONDARY}
    for name in (PRIMARY, SECONDARY):
        tested = [c for c in found if c["family"] == name and c["p_adjusted"] is not None]
        assert len(tested) >= 2, name
        assert [c["p_adjusted"] for c in tested] == pytest.approx(holm([c["p"] for c in tested]))
    text = report_lib.build(evidence)[1]
    assert "within each family, fixed before the run: the primary claims (kept_share, student_vs_baseline;" in text
    assert ", primary)" in report_lib.claim_line(_one(found, "student_vs_baseline"))
    assert ", secondary)" in report_lib.claim_line(_one(found, "ensemble_vs_baseline"))


def test_without_primary_claims_one_family_holds_every_tested_claim():
    evidence = _evidence(_run({}, student=0.80, baseline=0.70, ensemble=0.84))
    found, _ = report_lib.claims(evidence)
    assert {c["family"] for c in found} == {ALL}
    tested = [c for c in found if c["p_adjusted"] is not None]
    assert [c["p_adjusted"] for c in tested] == pytest.approx(holm([c["p"] for c in tested]))
    assert "Holm-adjusted p over every tested claim" in report_lib.build(evidence)[1]
    assert "primary" not in report_lib.claim_line(_one(found, "student_vs_baseline"))


def test_a_primary_claim_is_judged_in_its_own_family():
    """One student effect with p about 0.03: over the report's 4 tested claims Holm makes it not
    significant, in a primary family of its own it holds (the point of naming it before the run)."""
    evidence = _evidence(_rows(student=(0.79, 0.84, 0.80), baseline=(0.71, 0.73, 0.74)))
    evidence.resamples = 10_000
    alone, _ = report_lib.claims(evidence)
    evidence.primary_claims = ["student_vs_baseline"]
    primary, _ = report_lib.claims(evidence)
    one, own = _one(alone, "student_vs_baseline"), _one(primary, "student_vs_baseline")
    assert 0.0125 < one["p"] == own["p"] < 0.05
    assert one["verdict"] == NOT_SIGNIFICANT and one["p_adjusted"] > 0.05
    assert own["verdict"] == HOLDS and own["p_adjusted"] == own["p"]


def test_an_unknown_primary_claim_is_a_config_error_naming_the_known_keys():
    with pytest.raises(ConfigError, match="'student_beats_baseline' is not a claim of the report") as error:
        ExperimentConfig().replace(primary_claims=["student_vs_baseline", "student_beats_baseline"])
    assert "student_vs_baseline" in str(error.value) and "student_r<n>_vs_student" in str(error.value)
    assert error.value.for_command_line().startswith("--primary_claims: ")
    config = ExperimentConfig().replace(primary_claims=["student_r2_vs_student", "gain_carries"])
    assert config.distillation.primary_claims == ["student_r2_vs_student", "gain_carries"]


def test_the_family_is_recorded_once_and_a_different_one_is_refused(tmp_path):
    root = str(tmp_path / "run")
    assert report_lib.fix_family(root, ["student_vs_baseline", "gain_carries"]) == [
        "gain_carries",
        "student_vs_baseline",
    ]
    recorded = json.loads((tmp_path / "run" / report_lib.FAMILY_FILE).read_text())
    assert recorded == {"primary_claims": ["gain_carries", "student_vs_baseline"]}
    assert (
        report_lib.fix_family(root, ["gain_carries", "student_vs_baseline", "gain_carries"])
        == recorded["primary_claims"]
    )  # the same family, in any order
    for other in (["student_vs_baseline"], []):
        with pytest.raises(ConfigError) as error:
            report_lib.fix_family(root, other)
        assert "recorded primary claims gain_carries, student_vs_baseline, not " in str(error.value)
    with pytest.raises(ConfigError, match="not no primary claims"):
        report_lib.fix_family(root, None)


def test_a_run_from_before_family_files_recorded_no_primary_claims(tmp_path):
    """Evidence without the field (experiments 1-3) is one family of every claim: as they registered."""
    (tmp_path / INPUTS).write_text(json.dumps({"rows": []}))
    with pytest.raises(ConfigError, match="recorded no primary claims .*, not primary claims student_vs_baseline"):
        report_lib.fix_family(str(tmp_path), ["student_vs_baseline"])
    assert report_lib.fix_family(str(tmp_path), []) is None
    assert json.loads((tmp_path / report_lib.FAMILY_FILE).read_text()) == {"primary_claims": None}


def _saved(tmp_path, **fields):
    """A run directory holding the evidence of a 3-seed run (what `--mode=report` rebuilds from)."""
    evidence = _evidence(_run({}, student=0.80, baseline=0.70, ensemble=0.84, spread=0.02))
    for name, value in fields.items():
        setattr(evidence, name, value)
    root = tmp_path / "run"
    root.mkdir()
    evidence.save(str(root))
    return root


def test_the_resample_count_comes_from_the_evidence(tmp_path):
    root = _saved(tmp_path, resamples=300)
    evidence = report_lib.Evidence.load(str(root))
    assert evidence.resamples == 300 and json.loads((root / INPUTS).read_text())["resamples"] == 300
    _, found = report_lib.claims(evidence)
    assert {len(c.draws) for pairs in found.values() for c in pairs.values()} == {300}
    report = modes.report(ExperimentConfig().replace(model_dir=str(root), bootstrap_resamples=5000))
    assert report["bootstrap"]["resamples"] == 300  # the run's own count, not the flag's
    assert "Monte Carlo error (300 bootstrap resamples, seed 0;" in (root / "report.md").read_text()
    inputs = json.loads((root / INPUTS).read_text())
    del inputs["resamples"]  # evidence from before the count was recorded
    (root / INPUTS).write_text(json.dumps(inputs))
    assert report_lib.Evidence.load(str(root)).resamples == REGISTERED_RESAMPLES == 1000


def test_the_default_resample_count_is_the_libraries():
    assert ExperimentConfig().distillation.bootstrap_resamples == significance.RESAMPLES


def test_the_monte_carlo_error_of_p_is_binomial():
    assert significance.p_error(0.05, 100_000) == pytest.approx(2 * np.sqrt(0.025 * 0.975 / 100_000))
    assert significance.p_error(1.0, 10_000) == pytest.approx(1 / np.sqrt(10_000))
    draws = np.random.default_rng(0).normal(size=100_000)
    low, high = significance.bound_error(draws)
    expected = np.sqrt(0.025 * 0.975 / 100_000) / 0.0584  # sqrt(q (1 - q) / N) / density at the quantile
    assert low == pytest.approx(expected, rel=0.25) and high == pytest.approx(expected, rel=0.25)


def test_mode_report_with_the_runs_family_rebuilds_and_another_is_refused(tmp_path):
    root = _saved(tmp_path, resamples=200, primary_claims=["student_vs_baseline"])
    report = modes.report(ExperimentConfig().replace(model_dir=str(root)))  # empty: the run's own
    assert report["primary_claims"] == ["student_vs_baseline"]
    assert modes.report(ExperimentConfig().replace(model_dir=str(root), primary_claims=["student_vs_baseline"]))
    with pytest.raises(ConfigError, match="recorded primary claims student_vs_baseline, not primary claims gain"):
        modes.report(ExperimentConfig().replace(model_dir=str(root), primary_claims=["gain_carries"]))


def test_bin_run_refuses_a_different_family_with_a_clear_error(tmp_path):
    root = _saved(tmp_path, resamples=200)
    before = (root / INPUTS).read_bytes()
    result = run_cli("--mode=report", f"--model_dir={root}", "--primary_claims=student_vs_baseline")
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: --primary_claims: the run in {root} recorded no primary claims" in result.stderr
    assert "not primary claims student_vs_baseline" in result.stderr
    assert "Traceback" not in result.stderr and not (root / "report.json").exists()
    assert (root / INPUTS).read_bytes() == before


@pytest.mark.slow
def test_a_pipeline_records_its_family_and_resample_count_and_refuses_another_family(tmp_path):
    root = tmp_path / "run"
    common = ["--flagfile=configs/tiny.cfg", "--tasks=sst2", "--num_teachers=1", "--epochs=1", "--verbose=0"]
    env = {"MTKD_CACHE": str(tmp_path / "cache")}
    first = run_cli(
        *common,
        "--mode=pipeline",
        f"--model_dir={root}",
        "--primary_claims=student_vs_baseline",
        "--bootstrap_resamples=500",
        env=env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((root / report_lib.FAMILY_FILE).read_text()) == {"primary_claims": ["student_vs_baseline"]}
    inputs = json.loads((root / INPUTS).read_text())
    assert inputs["resamples"] == 500 and inputs["primary_claims"] == ["student_vs_baseline"]
    report = json.loads((root / "report.json").read_text())
    assert report["bootstrap"]["resamples"] == 500
    assert {c["key"] for c in report["claims"] if c["family"] == PRIMARY} == {"student_vs_baseline"}
    saved = (root / "report.json").read_bytes()
    again = run_cli(*common, "--mode=pipeline", f"--model_dir={root}", "--primary_claims=ensemble_vs_baseline", env=env)
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "recorded primary claims student_vs_baseline, not primary claims ensemble_vs_baseline" in again.stderr
    rebuilt = run_cli("--mode=report", f"--model_dir={root}", "--bootstrap_resamples=2000", env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (root / "report.json").read_bytes() == saved  # the run's own count and family
    assert os.path.isfile(root / "report.md")
