"""How a ``meshfed`` process writes its log: plain text for people, or one JSON object a line.

Every module logs through the standard library (``logging.getLogger("meshfed....")``); only the
root handler's formatter changes here, so a library's records (grpc, aiohttp) come out in the
same format as meshfed's own. The JSON form (``--log-format json``) is made by structlog's
:class:`~structlog.stdlib.ProcessorFormatter`: each line carries ``time`` (ISO 8601, UTC),
``level``, ``logger`` and ``message``, every field a caller passed in ``extra`` (``registry``,
``proxy``, ``resource``, ...), and ``exception`` with the traceback text when there is one, so
a log pipeline never has to re-assemble a multi-line traceback.
"""

from __future__ import annotations

import logging
import sys

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    """A formatter writing each record as one JSON object."""
    import structlog  # only for JSON logs: a text-logging process does not keep it resident

    pre_chain: list[structlog.typing.Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        structlog.stdlib.ExtraAdder(),  # the record's `extra` fields, as they were passed
    ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(default=str),
        ],
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every record at ``level`` or above to stderr in ``log_format`` (text or json).

    Like :func:`logging.basicConfig`, it leaves a root logger that already has handlers alone
    (an embedding program's, or pytest's when a test calls the CLI in-process)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
