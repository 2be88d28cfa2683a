"""The Feast objects of the configured use case, for the Feast CLI.

Nothing is declared by hand here: entities, sources, feature views and the versioned
feature service are generated from the use-case declaration
(``closedloop.core.feast_objects``), the same objects closedloop applies itself. Run the
CLI from this folder with the use case named, e.g.
``CLOSEDLOOP_USECASE_NAME=<name> feast plan``.
"""

from closedloop.core.feast_objects import feast_objects
from closedloop.core.settings import load_settings

_settings = load_settings()
# Feast's parser collects the module's Feast objects by attribute.
globals().update(feast_objects(_settings.usecase, _settings))
