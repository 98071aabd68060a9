"""``admission.k8s.io/v1`` AdmissionReview in, AdmissionReview with a JSON Patch out. Pure.

The webhook server (:mod:`injection.webhook`) reads the body and the namespace's labels and
hands them here; everything that decides the answer is in this module and
:mod:`injection.inject`, so it is tested without a server.

Promises: :func:`review` never raises. A body that is not an AdmissionReview gets
:class:`BadReview` (the server answers 400); a pod that cannot be injected is refused with a
message naming the field (the user's ``kubectl`` prints it); a pod left alone is allowed with
no patch and the reason in ``auditAnnotations``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import attrs

from meshfed.injection.inject import InjectionError, inject_pod
from meshfed.injection.patch import diff
from meshfed.injection.template import Template

API_VERSION = "admission.k8s.io/v1"
MAX_BODY = 4 * 1024 * 1024


class BadReview(ValueError):
    """The request body is not a usable AdmissionReview (the message says why)."""


@attrs.frozen(slots=True)
class Request:
    """The parts of an AdmissionReview request the injector uses."""

    uid: str
    namespace: str
    pod: Mapping[str, Any]
    operation: str
    dry_run: bool


@attrs.frozen(slots=True)
class Answer:
    """The response document plus what happened, for metrics and ``/debug/injectz``."""

    body: dict[str, Any]
    injected: bool
    reason: str
    namespace: str
    pod: str


def parse_request(raw: bytes) -> Request:
    """The request of an AdmissionReview body; raises :class:`BadReview`."""
    if len(raw) > MAX_BODY:
        raise BadReview(f"body over {MAX_BODY} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadReview(f"expected a JSON AdmissionReview: {str(exc)[:200]}") from None
    if not isinstance(doc, Mapping):
        raise BadReview("expected a JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise BadReview(
            f"expected apiVersion {API_VERSION} kind AdmissionReview, got "
            f"{str(doc.get('apiVersion'))[:60]} {str(doc.get('kind'))[:60]}"
        )
    request = doc.get("request")
    if not isinstance(request, Mapping):
        raise BadReview("expected request to be an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("expected request.uid")
    kind = request.get("kind") or {}
    if not isinstance(kind, Mapping) or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        raise BadReview(f"expected request.kind to be core/v1 Pod, got {str(kind)[:100]}")
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        raise BadReview("expected request.object to be a pod")
    namespace = request.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        meta = pod.get("metadata")
        namespace = meta.get("namespace") if isinstance(meta, Mapping) else None
    if not isinstance(namespace, str) or not namespace:
        raise BadReview("expected request.namespace")
    operation = request.get("operation", "CREATE")
    return Request(uid, namespace, pod, str(operation), bool(request.get("dryRun", False)))


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata")
    if isinstance(meta, Mapping):
        name = meta.get("name") or meta.get("generateName") or ""
        return name if isinstance(name, str) else ""
    return ""


def review(request: Request, template: Template, namespace_labels: Mapping[str, str]) -> Answer:
    """The AdmissionReview answering ``request``."""
    response: dict[str, Any] = {"uid": request.uid, "allowed": True}
    name = _name(request.pod)
    source = f"AdmissionReview {request.uid}"
    if request.operation != "CREATE":
        reason = f"operation {request.operation[:20]} (only CREATE is injected)"
        injected = False
    else:
        try:
            outcome = inject_pod(request.pod, template, request.namespace, namespace_labels, source)
        except InjectionError as exc:
            response["allowed"] = False
            response["status"] = {
                "code": 400,
                "reason": "BadRequest",
                "message": f"meshfed sidecar injection: {exc}",
            }
            return Answer(_review(response), False, f"refused: {exc}", request.namespace, name)
        injected, reason = outcome.injected, outcome.reason
        if outcome.injected:
            ops = diff(request.pod, outcome.pod)
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(ops, separators=(",", ":")).encode()
            ).decode()
    response["auditAnnotations"] = {"injection": ("injected: " if injected else "") + reason[:200]}
    return Answer(_review(response), injected, reason, request.namespace, name)


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
