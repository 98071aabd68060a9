"""Traffic-management config: the kinds, their parsers, the file store and rule ordering."""

from pilot.config.parse import PARSERS
from pilot.config.store import ConfigSnapshot, FileConfigStore

__all__ = ["PARSERS", "ConfigSnapshot", "FileConfigStore"]
