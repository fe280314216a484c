"""One base class for every error a user can fix: `bin/run` catches `MtkdError` alone.

Library messages name the setting (`skip_bad_rows`, `alpha`); `bin/run` spells it as a
flag (`--skip_bad_rows`) through `MtkdError.for_command_line`.
"""

from __future__ import annotations

import re


class MtkdError(Exception):
    """A problem with the user's input, files or settings; the message says what and where.

    `setting` names the configuration field(s) the message mentions, so the command line
    can spell them as flags.
    """

    def __init__(self, message: str, setting: str | tuple[str, ...] | None = None):
        super().__init__(message)
        self.setting = setting

    def for_command_line(self) -> str:
        """The message with its setting spelled as a flag (`alpha ...` -> `--alpha ...`)."""
        message = str(self)
        for setting in (self.setting,) if isinstance(self.setting, str) else self.setting or ():
            message = re.sub(rf"(?<![-\w.]){re.escape(setting)}\b", f"--{setting}", message)
        return message


class ConfigError(MtkdError, ValueError):
    """A setting of an `ExperimentConfig` is wrong, alone or together with others."""
