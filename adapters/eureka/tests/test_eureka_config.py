"""The eureka registry entry is validated with errors naming registry, field and expectation."""

import pytest

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka.config import parse_duration, parse_settings, split_credentials
from meshfed.adapters.eureka.registry import create
from meshfed.core.resources import ConfigErrors
from meshfed.registry import AggregateRegistry


def test_defaults_and_normalised_servers():
    settings = parse_settings({"servers": ["http://127.0.0.1:8761/eureka"]}, "eu")
    assert settings.servers == ("http://127.0.0.1:8761/eureka/",)
    assert settings.fetch_interval == 5.0 and settings.timeout == 5.0
    assert settings.format == "json"
    assert settings.mapping.hostname_template == "{vip}"
    assert settings.mapping.registry == "eu"
    assert settings.tls is None and not settings.username


def test_every_key():
    settings = parse_settings(
        {
            "servers": ["https://a.example:8761/eureka/", "https://b.example/eureka"],
            "fetchInterval": "500ms",
            "fullFetchInterval": "90s",
            "timeout": 2,
            "maxBackoff": "1m",
            "format": "XML",
            "auth": {"username": "u", "password": "s3cr3t-pw"},
            "tls": {"caFile": "/ca.pem", "certFile": "/c.pem", "keyFile": "/k.pem"},
            "hostnameTemplate": "{vip}.eureka",
            "namespace": "shop",
            "servicePort": 8080,
            "secureServicePort": 8443,
        },
        "eu",
    )
    assert settings.fetch_interval == 0.5 and settings.timeout == 2.0
    assert settings.full_fetch_interval == 90.0
    assert settings.max_backoff == 60.0 and settings.format == "xml"
    assert (settings.username, settings.password) == ("u", "s3cr3t-pw")
    assert settings.tls is not None and settings.tls.ca_file == "/ca.pem"
    assert settings.mapping.service_port == 8080
    assert "s3cr3t-pw" not in repr(settings)


def test_credentials_in_url_are_moved_out_of_it():
    assert split_credentials("http://user:pw@127.0.0.1:8761/eureka/") == (
        "http://127.0.0.1:8761/eureka/",
        "user",
        "pw",
    )
    settings = parse_settings({"servers": ["http://user:pw@127.0.0.1:8761/eureka"]}, "eu")
    assert settings.servers == ("http://127.0.0.1:8761/eureka/",)
    assert (settings.username, settings.password) == ("user", "pw")


@pytest.mark.parametrize(
    ("value", "seconds"), [("5s", 5.0), ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), (3, 3.0)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigErrors) as info:
        parse_settings(
            {
                "servers": ["ftp://x", "http://ok:1/eureka"],
                "fetchInterval": "soon",
                "format": "yaml",
                "hostnameTemplate": "{service}",
                "tls": {"certFile": "/c.pem"},
                "fetchIntervall": "5s",
            },
            "eu",
        )
    text = str(info.value)
    for expected in (
        "registry eu: servers[0]: expected an http(s) URL",
        "fetchInterval: expected a duration",
        "format: expected one of json, xml",
        "hostnameTemplate: expected a template",
        "tls.certFile: expected certFile and keyFile together",
        "fetchIntervall: unknown field",
    ):
        assert expected in text
    with pytest.raises(ConfigErrors, match="servers: is required"):
        parse_settings({}, "eu")


def test_create_is_the_entry_point_contract():
    member = AggregateRegistry().add_member("eu", "eureka")
    adapter = create(AdapterContext(member, {"servers": ["http://127.0.0.1:1/eureka"]}))
    info = adapter.describe()
    assert info["servers"] == ["http://127.0.0.1:1/eureka/"]
    assert info["currentServer"] == "http://127.0.0.1:1/eureka/"
    assert info["appsHashcode"] == "" and info["lastFetch"] is None


def test_basic_auth_header():
    from meshfed.adapters.eureka.client import basic_auth

    # RFC 7617's example.
    assert basic_auth("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


def test_regions_are_lower_cased_and_kept_in_order():
    settings = parse_settings(
        {
            "servers": ["http://127.0.0.1:8761/eureka"],
            "region": "US-East",
            "remoteRegions": ["us-west", "EU-Central"],
        },
        "eu",
    )
    assert settings.region == "us-east"
    assert settings.remote_regions == ("us-west", "eu-central")


def test_region_errors_name_the_field():
    with pytest.raises(ConfigErrors) as info:
        parse_settings(
            {
                "servers": ["http://127.0.0.1:8761/eureka"],
                "remoteRegions": ["us-west", "us-west", "a,b", "x"],
            },
            "eu",
        )
    text = str(info.value)
    for expected in (
        "registry eu: region: is required with remoteRegions",
        "remoteRegions[1]: expected each region once",
        "remoteRegions[2]: expected a region name",
    ):
        assert expected in text
    with pytest.raises(ConfigErrors, match="remoteRegions\\[0\\]: expected regions other than"):
        parse_settings(
            {"servers": ["http://h/eureka"], "region": "us-east", "remoteRegions": ["US-EAST"]},
            "eu",
        )
    with pytest.raises(ConfigErrors, match="region: expected a region name"):
        parse_settings({"servers": ["http://h/eureka"], "region": "us east"}, "eu")
    with pytest.raises(ConfigErrors, match="remoteRegions: expected a list of strings"):
        parse_settings({"servers": ["http://h/eureka"], "remoteRegions": "us-west"}, "eu")
