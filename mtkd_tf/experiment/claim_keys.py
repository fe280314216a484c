"""Every claim the report makes, by key: its title and the comparison behind it, and the check of
the keys a user names (`--primary_claims`). Apart from the report so that the config can check
keys without loading the report's modules."""

from __future__ import annotations

import re
from typing import Sequence

from mtkd_tf.errors import ConfigError
from mtkd_tf.experiment.layout import variant

KEPT_THRESHOLD = 0.5  # "keeps most of the gain" (the paper says nearly all)

# Every claim the report makes: `key: (title, comparison)`. The key is the claim's name in report.json
# and everywhere the report matches claims (Holm, gates, the text); the title is only for reading;
# the comparison is the `"a - b"` of `comparisons` behind the claim (None: derived from other claims).
CLAIMS: dict[str, tuple[str, str | None]] = {
    "ensemble_vs_mean_member": ("The ensemble beats its mean member", "ensemble - mean member"),
    "ensemble_vs_picked_member": ("The ensemble beats the member picked on dev", "ensemble - picked member"),
    "ensemble_vs_baseline": ("The ensemble beats the baseline", "ensemble - baseline"),
    "student_vs_baseline": ("The student beats the baseline", "student - baseline"),
    "kept_share": (
        f"The student keeps at least {100 * KEPT_THRESHOLD:.0f}% of the ensemble's gain (the paper: nearly all)",
        None,
    ),
    "gain_carries": ("The gain carries to tasks without a teacher", "student - baseline"),
    "student_ft_vs_baseline_ft": (
        "After per-task fine-tuning, the student beats the baseline",
        "student_ft - baseline_ft",
    ),
}
# A variant beyond the paper (`layout.variant`: student_anneal, student_r1, ...) against the student:
# key `<row>_vs_student`, one family per variant row.
VARIANT_CLAIM = ("{row}_vs_student", "Beyond the paper, {what} ({row}) beats the student", "{row} - student")
_VARIANT_KEY = re.compile(r"^(\w+)_vs_student$")


def variant_key(row: str) -> str:
    """The key of the claim that variant `row` beats the student (`student_anneal_vs_student`)."""
    return VARIANT_CLAIM[0].format(row=row)


def claim_kind(key: str) -> tuple[str, str | None]:
    """`(title, comparison)` of the claims named `key`; a KeyError names the known keys."""
    if key in CLAIMS:
        return CLAIMS[key]
    match = _VARIANT_KEY.match(key)
    if match and variant(match.group(1)):
        row = match.group(1)
        return VARIANT_CLAIM[1].format(row=row, what=variant(row)), VARIANT_CLAIM[2].format(row=row)
    raise KeyError(f"{key!r} is not a claim of the report; known: {', '.join(CLAIMS)}, {VARIANT_CLAIM[0]}")


KNOWN_KEYS = ", ".join([*CLAIMS, "student_anneal_vs_student", "student_r<n>_vs_student (n = 1, 2, ...)"])


def check_claim_keys(keys: Sequence[str], setting: str = "primary_claims") -> None:
    """Every key in `keys` names a claim of the report (`claim_kind`), or a ConfigError names it."""
    unknown = []
    for key in keys:
        try:
            claim_kind(key)
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ConfigError(
            f"{setting}: {', '.join(repr(k) for k in unknown)} is not a claim of the report; known: {KNOWN_KEYS}",
            setting,
        )
