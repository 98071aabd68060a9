"""Eureka's REST answers (``GET /eureka/apps`` and ``/apps/delta``) turned into plain records.

Why this module exists: Eureka speaks two encodings (JSON and XML, chosen by ``Accept``) and
both carry quirks inherited from the Java codecs (XStream, Jettison, Jackson) that every client
must undo before it can compare two answers:

- A list of one element may be written as the element itself (``"application": {...}`` instead
  of ``[{...}]``, likewise ``"instance"``), and an empty list may be missing altogether.
- Ports are ``{"$": 8080, "@enabled": "true"}`` in JSON and ``<port enabled="true">8080</port>``
  in XML; numbers and booleans may arrive as strings.
- ``metadata`` of an instance without metadata may be
  ``{"@class": "java.util.Collections$EmptyMap"}`` (or ``<metadata class="..."/>``); the
  ``@class`` marker is not a metadata entry.
- The override field is ``overriddenStatus`` in current servers and ``overriddenstatus`` in older
  ones; an instance without ``instanceId`` (pre-1.2 servers) is known by its host name, or by the
  ``instance-id`` of its Amazon data-centre info, as the Java client does.

Promises: parsing is pure (bytes in, frozen records out) and canonical: equal instances give
equal :class:`Instance` records whatever the encoding or key order, and fields that change on
every heartbeat (lease timestamps) are not kept, so a record changes only when something a
consumer can see changed. Malformed answers raise :class:`WireError`, never anything else.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

UP = "UP"
DOWN = "DOWN"
STARTING = "STARTING"
OUT_OF_SERVICE = "OUT_OF_SERVICE"
UNKNOWN = "UNKNOWN"
STATUSES = frozenset({UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN})

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"
ACTION_TYPES = frozenset({ADDED, MODIFIED, DELETED})

AMAZON_DATA_CENTER = "Amazon"


class WireError(ValueError):
    """An answer that is not a well-formed Eureka applications document."""


Pairs = tuple[tuple[str, str], ...]


def _pairs(value: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> Pairs:
    if value is None:
        return ()
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), "" if v is None else str(v)) for k, v in items))


@attrs.frozen(slots=True)
class PortSpec:
    """An instance port and its ``enabled`` flag (a disabled port must never get traffic)."""

    number: int = 0
    enabled: bool = False


@attrs.frozen(slots=True)
class DataCenter:
    """``dataCenterInfo``: ``MyOwn`` / ``Netflix`` carry a name only, ``Amazon`` has metadata."""

    name: str = ""
    class_name: str = ""
    metadata: Pairs = attrs.field(default=(), converter=_pairs)

    def get(self, key: str) -> str:
        return dict(self.metadata).get(key, "")


@attrs.frozen(slots=True)
class Instance:
    """One registered instance, as much of it as the mesh uses, in canonical form.

    ``action_type`` only matters inside a delta; it takes no part in equality, so an instance
    learnt from a delta equals the same instance learnt from a full fetch. ``region`` is never
    parsed: Eureka's answers do not say which region an instance came from.
    """

    instance_id: str
    app: str
    ip_addr: str = ""
    host_name: str = ""
    vip_address: str = ""
    secure_vip_address: str = ""
    status: str = UNKNOWN
    overridden_status: str = UNKNOWN
    port: PortSpec = attrs.field(factory=PortSpec)
    secure_port: PortSpec = attrs.field(factory=PortSpec)
    metadata: Pairs = attrs.field(default=(), converter=_pairs)
    data_center: DataCenter = attrs.field(factory=DataCenter)
    action_type: str = attrs.field(default="", eq=False)
    # Not on the wire: the region the adapter learnt the instance from ("" = not known), set
    # when views of several regions are merged (see reconcile.merge_regions).
    region: str = ""

    def meta(self, key: str) -> str:
        return dict(self.metadata).get(key, "")


@attrs.frozen(slots=True)
class Applications:
    """One answer of ``/apps`` or ``/apps/delta``: instances plus the server's reconcile data."""

    instances: tuple[Instance, ...] = ()
    apps_hashcode: str = ""
    versions_delta: str = ""


# -- shared normalisation -------------------------------------------------------------------


def _status(value: Any) -> str:
    # Java's InstanceStatus.toEnum maps anything it does not know to UNKNOWN; do the same so the
    # hash code we compute matches the server's.
    key = str(value or "").strip().upper()
    return key if key in STATUSES else UNKNOWN


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def _int(value: Any, what: str) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise WireError(f"expected an integer {what}, got {value!r}") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    # "@class" is the Java type marker of an empty map, not an entry.
    return {str(k): _text(v) for k, v in value.items() if not str(k).startswith("@")}


def _instance(raw: Mapping[str, Any], app_name: str) -> Instance:
    app = _text(raw.get("app")) or app_name
    if not app:
        raise WireError("instance without an app name")
    dc_raw = raw.get("dataCenterInfo")
    data_center = DataCenter()
    if isinstance(dc_raw, Mapping):
        data_center = DataCenter(
            name=_text(dc_raw.get("name")),
            class_name=_text(dc_raw.get("@class") or dc_raw.get("class")),
            metadata=_metadata(dc_raw.get("metadata")),
        )
    host_name = _text(raw.get("hostName"))
    # InstanceInfo.getId(): instanceId, else the Amazon instance-id, else the host name.
    instance_id = _text(raw.get("instanceId"))
    if not instance_id and data_center.name == AMAZON_DATA_CENTER:
        instance_id = data_center.get("instance-id")
    instance_id = instance_id or host_name
    if not instance_id:
        raise WireError(f"instance of {app} has neither instanceId nor hostName")
    overridden = raw.get("overriddenStatus", raw.get("overriddenstatus"))
    action = _text(raw.get("actionType")).upper()
    return Instance(
        instance_id=instance_id,
        app=app.upper(),
        ip_addr=_text(raw.get("ipAddr")),
        host_name=host_name,
        vip_address=_text(raw.get("vipAddress")),
        secure_vip_address=_text(raw.get("secureVipAddress")),
        status=_status(raw.get("status")),
        overridden_status=_status(overridden),
        port=raw.get("port") or PortSpec(),
        secure_port=raw.get("securePort") or PortSpec(),
        metadata=_metadata(raw.get("metadata")),
        data_center=data_center,
        action_type=action if action in ACTION_TYPES else "",
    )


# -- JSON -----------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    """Undo the single-element quirk: None -> [], an object -> [object], a list stays."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def _json_port(value: Any, what: str) -> PortSpec:
    if value is None:
        return PortSpec()
    if isinstance(value, Mapping):
        number = value.get("$", value.get("port"))
        enabled = value.get("@enabled", value.get("enabled", True))
        if number is None:
            return PortSpec()
        return PortSpec(_int(number, what), _bool(enabled))
    # A bare number: some hand-written registrations send one; it is enabled by implication.
    return PortSpec(_int(value, what), True)


def parse_json(body: bytes | str) -> Applications:
    """Parse a JSON ``applications`` answer."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    root = doc.get("applications") if isinstance(doc, Mapping) else None
    if not isinstance(root, Mapping):
        raise WireError("expected a JSON object with an 'applications' object")
    instances: list[Instance] = []
    for app in _as_list(root.get("application")):
        if not isinstance(app, Mapping):
            raise WireError(f"expected an application object, got {type(app).__name__}")
        name = _text(app.get("name"))
        for raw in _as_list(app.get("instance")):
            if not isinstance(raw, Mapping):
                raise WireError(f"expected an instance object in {name}")
            fields = dict(raw)
            fields["port"] = _json_port(raw.get("port"), "port")
            fields["securePort"] = _json_port(raw.get("securePort"), "securePort")
            instances.append(_instance(fields, name))
    return Applications(
        instances=tuple(instances),
        apps_hashcode=_text(root.get("apps__hashcode")),
        versions_delta=_text(root.get("versions__delta")),
    )


# -- XML ------------------------------------------------------------------------------------


def _xml_children(node: ElementTree.Element) -> dict[str, Any]:
    """Leaf children as text; ``metadata`` and ``dataCenterInfo`` as nested mappings."""
    out: dict[str, Any] = {}
    for child in node:
        if child.tag in ("metadata",):
            out[child.tag] = {c.tag: c.text for c in child}
        elif child.tag == "dataCenterInfo":
            dc = _xml_children(child)
            dc["@class"] = child.get("class", "")
            out[child.tag] = dc
        elif child.tag in ("port", "securePort"):
            text = _text(child.text)
            out[child.tag] = (
                PortSpec(_int(text, child.tag), _bool(child.get("enabled", "true")))
                if text
                else PortSpec()
            )
        elif len(child) == 0:
            out[child.tag] = child.text
    return out


def parse_xml(body: bytes | str) -> Applications:
    """Parse an XML ``<applications>`` answer."""
    raw = body.encode() if isinstance(body, str) else body
    # Eureka never sends a DTD; refusing one rules out entity-expansion tricks from a bad peer.
    if b"<!DOCTYPE" in raw[:4096] or b"<!ENTITY" in raw:
        raise WireError("XML with a DTD is not an Eureka answer")
    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise WireError(f"not XML: {exc}") from None
    if root.tag != "applications":
        raise WireError(f"expected an <applications> document, got <{root.tag}>")
    instances: list[Instance] = []
    for app in root.findall("application"):
        name = _text(app.findtext("name"))
        for node in app.findall("instance"):
            instances.append(_instance(_xml_children(node), name))
    return Applications(
        instances=tuple(instances),
        apps_hashcode=_text(root.findtext("apps__hashcode")),
        versions_delta=_text(root.findtext("versions__delta")),
    )


def parse(body: bytes, content_type: str = "") -> Applications:
    """Parse an answer in whichever encoding it is (by content type, else by its first byte)."""
    kind = content_type.split(";")[0].strip().lower()
    if kind.endswith("json"):
        return parse_json(body)
    if kind.endswith("xml"):
        return parse_xml(body)
    head = body.lstrip()[:1]
    if head == b"<":
        return parse_xml(body)
    if head == b"{":
        return parse_json(body)
    raise WireError(f"neither JSON nor XML (content type {content_type or 'missing'})")
