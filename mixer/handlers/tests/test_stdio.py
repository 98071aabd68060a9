import datetime as dt
import ipaddress
import json

from meshfed.mixer.handlers import stdio
from meshfed.mixer.handlers.tests.helpers import env, field_errors, parse_ok
from meshfed.mixer.templates import LogEntry, Metric

TS = dt.datetime(2017, 10, 10, 12, 0, 1, 250000, tzinfo=dt.UTC)


def entry(i, severity="Default"):
    return LogEntry(
        "accesslog.logentry.istio-system",
        {
            "sourceIp": ipaddress.ip_address("10.0.0.1"),
            "latency": dt.timedelta(milliseconds=12),
            "responseCode": 200,
            "url": f"/item/{i}",
            "headers": {"x": "y"},
        },
        TS,
        severity,
    )


async def test_json_lines_to_a_file(tmp_path):
    path = tmp_path / "logs" / "access.log"
    spec = {
        "logStream": "FILE",
        "outputPath": str(path),
        "severityLevels": {"Default": "INFO", "bad": "ERROR"},
        "metricLevel": "WARNING",
    }
    h = await stdio.KIND.build(parse_ok(stdio.KIND, spec), env())
    await h.report([entry(i) for i in range(1000)])
    await h.report([entry(0, "bad"), Metric("requestcount.metric.istio-system", 1, {"code": 200})])
    await h.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 1002
    assert lines[0] == {
        "level": "info",
        "time": "2017-10-10T12:00:01.250000Z",
        "instance": "accesslog.logentry.istio-system",
        "sourceIp": "10.0.0.1",
        "latency": "0.012s",
        "responseCode": 200,
        "url": "/item/0",
        "headers": {"x": "y"},
    }
    assert [x["url"] for x in lines[:1000]] == [f"/item/{i}" for i in range(1000)]  # in order
    assert lines[1000]["level"] == "error"
    assert lines[1001]["level"] == "warning" and lines[1001]["value"] == 1
    assert lines[1001]["code"] == 200 and lines[1001]["instance"].startswith("requestcount")


async def test_path_as_log_stream_appends_and_console_format(tmp_path):
    path = tmp_path / "out.log"
    path.write_text("earlier\n")
    spec = {"logStream": str(path), "outputAsJson": False}
    h = await stdio.KIND.build(parse_ok(stdio.KIND, spec), env())
    await h.report([entry(1, "WARNING")])
    await h.flush()
    text = path.read_text()
    await h.close()
    first, second = text.splitlines()
    assert first == "earlier"
    ts, level, instance, rest = second.split("\t")
    assert (ts, level, instance) == (
        "2017-10-10T12:00:01.250000Z",
        "WARNING",
        "accesslog.logentry.istio-system",
    )
    assert "url=/item/1" in rest and "responseCode=200" in rest


async def test_stdout(capfd):
    h = await stdio.KIND.build(parse_ok(stdio.KIND, {"logStream": "STDOUT"}), env())
    await h.report([entry(5)])
    await h.close()
    out = capfd.readouterr().out
    assert json.loads(out.strip())["url"] == "/item/5"


def test_bad_params_name_fields():
    errors = field_errors(
        stdio.KIND,
        {
            "logStream": "SYSLOG",
            "severityLevels": {"Default": "LOUD"},
            "metricLevel": "DEBUG",
            "outputAsJson": "yes",
        },
    )
    assert set(errors) == {
        "logStream",
        "severityLevels.Default",
        "metricLevel",
        "outputAsJson",
    }
    assert list(field_errors(stdio.KIND, {"logStream": "FILE"})) == ["outputPath"]


def test_levels_and_streams_by_proto_number_as_istio_docs_wrote_them():
    params = parse_ok(
        stdio.KIND,
        {"severity_levels": {"warning": 1, "info": 0}, "log_stream": 0, "metric_level": 2},
    )
    assert params.severity_levels == {"warning": stdio.Level.WARNING, "info": stdio.Level.INFO}
    assert params.stream is stdio.Stream.STDOUT and params.metric_level is stdio.Level.ERROR
    assert parse_ok(stdio.KIND, {"outputAsJson": True}).stream is stdio.Stream.STDERR
    errors = field_errors(stdio.KIND, {"severityLevels": {"x": 7}, "logStream": 9})
    assert set(errors) == {"severityLevels.x", "logStream"}
    assert "1 (WARNING)" in errors["severityLevels.x"]
