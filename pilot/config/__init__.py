"""Traffic-management config: the kinds, their parsers, the file store and rule ordering."""

from meshfed.pilot.config.parse import PARSERS
from meshfed.pilot.config.store import ConfigSnapshot, FileConfigStore

__all__ = ["PARSERS", "ConfigSnapshot", "FileConfigStore"]
