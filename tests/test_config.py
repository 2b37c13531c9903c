from __future__ import annotations

import re
from pathlib import Path

import pytest

from loopwire.config import load_config, parse_config
from loopwire.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "loopwire.yaml"
ENV = {"CIO_WEBHOOK_SIGNING_KEY": "k", "AMPLITUDE_API_KEY": "amp-secret-key"}


def test_annotated_example_loads() -> None:
    config = load_config(EXAMPLE, env=ENV)
    amp = config.destinations["amplitude"]
    assert amp.region == "us" and amp.retry.max_age == 86_400 and amp.batching.linger == 0.25
    assert config.sources.customerio_webhooks is not None
    assert config.sources.customerio_webhooks.replay_window == 900


def test_secrets_print_as_stars() -> None:
    config = load_config(EXAMPLE, env=ENV)
    assert "amp-secret-key" not in repr(config) and "***" in repr(config)
    assert config.destinations["amplitude"].api_key.reveal() == "amp-secret-key"


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("server:\n  port: 1\n  colour: red\n", "server.colour", 3, "unknown key"),
        ("server:\n  port: eighty\n", "server.port", 2, "Expected `int`"),
        (
            "destinations:\n  amp:\n    type: amplitude\n    api_key: x\n    region: mars\n",
            "destinations.amp.region",
            5,
            "mars",
        ),
        ("destinations:\n  amp:\n    type: amplitude\n    region: us\n", "destinations.amp", 2, "api_key"),
        ("destinations:\n  amp:\n    type: amplitud\n", "destinations.amp.type", 3, "amplitude"),
        (
            "destinations:\n  amp:\n    type: amplitude\n    api_key: x\n    region: us\n    retry:\n"
            "      max_age: forever\n",
            "destinations.amp.retry.max_age",
            7,
            "duration",
        ),
        (
            "sources:\n  customerio_webhooks:\n    signing_keys:\n      - ${NOT_SET}\n",
            "sources.customerio_webhooks.signing_keys[0]",
            4,
            "NOT_SET",
        ),
    ],
)
def test_errors_name_the_key_and_the_line(text: str, key: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text, env={})
    assert (error.value.key, error.value.line) == (key, line)
    assert words in str(error.value)


def test_region_has_no_silent_default() -> None:
    with pytest.raises(ConfigError, match="region"):
        parse_config("destinations:\n  amp:\n    type: amplitude\n    api_key: x\n", env={})


def test_env_default_syntax() -> None:
    config = parse_config("store:\n  path: ${DB:-fallback.db}\n", env={})
    assert config.store.path == "fallback.db"


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config("server:\n  port: [1\n", env={})
    assert error.value.line is not None


def test_commented_examples_in_the_annotated_config_load_too() -> None:
    text = EXAMPLE.read_text()
    # "  # key: value" and "  #   - item" lines are examples; prose comments start at column 0
    uncommented = re.sub(r"(?m)^(  +)# ( *)([\w-]+:|- )", r"\1\2\3", text)
    uncommented = re.sub(r"(?m)^# (audiences|experiments):", r"\1:", uncommented)
    uncommented = re.sub(r"(?m)^#   ", "  ", uncommented)
    env = {
        **ENV,
        "STOREFRONT_WRITE_KEY": "w",
        "SEGMENT_WRITE_KEY": "s",
        "CIO_SITE_ID": "site",
        "CIO_TRACK_API_KEY": "k",
        "LOOPWIRE_CONSOLE_TOKEN": "console-token-0123456789",
        "LOOPWIRE_METRICS_TOKEN": "metrics-token-0123456789",
    }
    config = parse_config(uncommented, env=env)
    assert config.console.token is not None and config.console.token.reveal() == "console-token-0123456789"
    assert config.console.metrics_token is not None
    assert set(config.destinations) >= {"amplitude", "segment", "customerio"}
    assert config.sources.segment_api is not None and config.sources.amplitude_api is not None
    assert set(config.audiences) == {"cart_abandoners", "recent_purchasers", "high_intent", "clickers"}
    assert config.experiments["cart_journey"].audience == "cart_abandoners"
    assert config.store.retention.events == 90 * 86_400  # and covers the example's windows


PG = "store:\n  type: postgres\n  dsn: ${LOOPWIRE_PG_DSN}\n"


def test_a_postgres_store_takes_its_dsn_from_the_environment_and_never_prints_it() -> None:
    config = parse_config(PG, env={"LOOPWIRE_PG_DSN": "postgresql://ops:s3cret@db/loopwire"})
    assert config.store.type == "postgres" and config.store.dsn is not None
    assert config.store.dsn.reveal() == "postgresql://ops:s3cret@db/loopwire"
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.store)
    # what keeps files beside a SQLite log is off there by default (issue 11: not yet)
    assert not config.server.ingest_process and not config.identity.graph
    assert parse_config("", env={}).server.ingest_process  # and still on by default with SQLite


def test_retention_is_taken_on_postgres_with_the_same_keys_and_checks() -> None:
    env = {"LOOPWIRE_PG_DSN": "dbname=x"}
    config = parse_config(PG + "  retention:\n    events: 30d\n    dead: 14d\n", env=env)
    assert config.store.retention.events == 30 * 86_400 and config.store.retention.dead == 14 * 86_400
    with pytest.raises(ConfigError) as error:  # the dedupe horizon holds there too
        parse_config(PG + "  retention:\n    events: 3d\n", env=env)
    assert error.value.key == "store.retention.events"


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("store:\n  type: postgres\n", "store", 1, "needs `dsn`"),
        ("store:\n  dsn: x\n", "store", 1, "type: postgres"),
        ("store:\n  type: mysql\n", "store.type", 2, "mysql"),
        (PG + "server:\n  ingest_process: true\n", "server.ingest_process", 5, "SQLite store"),
        (PG + "identity:\n  graph: true\n", "identity.graph", 5, "SQLite store"),
    ],
)
def test_a_store_section_that_cannot_work_names_its_key(text: str, key: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text, env={"LOOPWIRE_PG_DSN": "dbname=x"})
    assert (error.value.key, error.value.line) == (key, line)
    assert words in str(error.value)
