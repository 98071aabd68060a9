import datetime as dt

from meshfed.mixer.handlers import denier, noop
from meshfed.mixer.handlers.api import QuotaRequest
from meshfed.mixer.handlers.tests.helpers import env, field_errors, parse_ok
from meshfed.mixer.templates import CheckNothing, ListEntry, Quota, ReportNothing


async def test_denier_answers_its_status_with_its_validity():
    params = parse_ok(
        denier.KIND,
        {
            "status": {"code": 7, "message": "Not allowed"},
            "validDuration": "10s",
            "validUseCount": 3,
        },
    )
    handler = await denier.KIND.build(params, env())
    for instance in (CheckNothing("denyall"), ListEntry("l", "x")):
        result = await handler.check(instance)
        assert (result.code, result.message) == (7, "Not allowed")
        assert result.valid_duration == dt.timedelta(seconds=10)
        assert result.valid_use_count == 3
        assert not result.ok
    granted = await handler.quota(Quota("q", {}), QuotaRequest(5))
    assert granted.granted == 0
    await handler.close()


async def test_denier_defaults_to_failed_precondition():
    handler = await denier.KIND.build(parse_ok(denier.KIND, {}), env())
    result = await handler.check(CheckNothing("c"))
    assert result.code == 9
    named = parse_ok(denier.KIND, {"status": {"code": "UNAUTHENTICATED"}})
    assert named.code == 16


def test_denier_bad_params_name_fields():
    errors = field_errors(
        denier.KIND,
        {"status": {"code": 42, "mesage": "typo"}, "validDuration": "forever", "extra": 1},
    )
    assert set(errors) == {"status.code", "status.mesage", "validDuration", "extra"}
    assert "0..16" in errors["status.code"]


async def test_noop_accepts_everything():
    assert noop.KIND.templates == {
        "checknothing",
        "listentry",
        "logentry",
        "metric",
        "quota",
        "reportnothing",
    }
    handler = await noop.KIND.build(parse_ok(noop.KIND, {}), env())
    assert (await handler.check(CheckNothing("c"))).ok
    assert (await handler.quota(Quota("q", {}), QuotaRequest(17))).granted == 17
    assert await handler.report([ReportNothing("r")]) is None
    assert field_errors(noop.KIND, {"anything": 1}) == {
        "anything": "unknown field (noop takes no params)"
    }
