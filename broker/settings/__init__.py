"""Settings: one frozen object, every setting declared once, read and validated in one place.

- ``model.py``: ``Settings``, each field a ``setting()`` with its environment variable,
  bounds and one-line doc; the file key is the field name. ``SETTINGS`` lists them.
- ``load.py``: ``load`` (defaults < config file < environment) and ``from_env`` (the only
  reader of the environment); both validate, raising ``SettingsError`` that lists every
  problem by file key or variable. ``validate`` checks a ``Settings`` built in code.
- ``reference.py``: the table in docs/configuration.md, generated (``make docs``).

Invariant: no setting without both a file key and an environment variable; no reader of
the environment outside ``from_env``/``load``; nothing read at import.
"""

from broker.settings.load import CONFIG_ENV, from_env, load, settings_from_file, validate
from broker.settings.model import SETTINGS, IssuerSettings, OIDCProviderSettings, Settings
from broker.settings.spec import Declared, SettingsError

__all__ = [
    "CONFIG_ENV",
    "SETTINGS",
    "Declared",
    "IssuerSettings",
    "OIDCProviderSettings",
    "Settings",
    "SettingsError",
    "from_env",
    "load",
    "settings_from_file",
    "validate",
]
