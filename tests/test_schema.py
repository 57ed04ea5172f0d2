"""The one validation idiom (hatzoo.schema): dataclass fields that declare their checks, and its users."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from hatzoo.errors import CardError, HATError, InputError
from hatzoo.export.serve_config import ServeConfig, add_arguments, from_namespace
from hatzoo.schema import Schema, rule


@dataclass
class Options:
    rate: float = rule(0.5, lo=0, hi=1, open_hi=True)
    steps: int = rule(3, lo=1)
    schedule: str = rule("linear", choices="hatzoo.core.schedules:SCHEDULES")
    mode: str = rule("fast", choices=("fast", "exact"), lower=True)
    limit: int | None = None
    tags: list[str] = rule(factory=list)


def check(data: dict, **kwargs) -> dict:
    return Schema("options.yaml").fields(Options, data, "opts", **kwargs)


def test_fields_take_defaults_and_convert_an_int_where_a_float_is_declared():
    assert check({"rate": 0, "mode": "EXACT", "limit": None}) == {
        "rate": 0.0,
        "steps": 3,
        "schedule": "linear",
        "mode": "exact",
        "limit": None,
        "tags": [],
    }
    assert isinstance(check({"rate": 0})["rate"], float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rate": 1}, "opts.rate must be >= 0 and < 1, got 1"),
        ({"steps": 0}, "opts.steps must be >= 1, got 0"),
        ({"steps": 2.5}, "opts.steps must be an integer, got float 2.5"),
        ({"schedule": "step"}, "opts.schedule must be one of \\['linear'"),
        ({"mode": "slow"}, "opts.mode must be one of \\['fast', 'exact'\\], got 'slow'"),
        ({"limit": "10"}, "opts.limit must be an integer, got str '10'"),
        ({"tags": "a"}, "opts.tags must be a list, got str 'a'"),
        (
            {"colour": "red"},
            "opts.colour is not a known key \\(known: rate, steps, schedule, mode, limit, tags\\)",
        ),
    ],
)
def test_a_bad_field_names_the_file_the_key_and_what_was_expected(data, message):
    with pytest.raises(HATError, match=f"^options.yaml: {message}"):
        check(data)


def test_a_registry_is_read_only_when_asked():
    assert check({"schedule": "anything"}, registries=False)["schedule"] == "anything"
    with pytest.raises(HATError, match="opts.schedule must be a string"):
        check({"schedule": 3}, registries=False)


def test_a_subclass_keeps_its_own_wording_and_error_class():
    class CardLike(Schema):
        error = CardError
        SEPARATOR = ": "
        UNKNOWN_VALUE = "unknown value {value!r}; choose one of {choices}"

    with pytest.raises(CardError, match=r"^c.yaml: opts.mode: unknown value 'slow'; choose one of"):
        CardLike("c.yaml").fields(Options, {"mode": "slow"}, "opts")


# ----------------------------------------------------------------------------- the server's options
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"micro_batch": 0}, "micro_batch must be >= 1, got 0"),
        ({"body_timeout_s": 0}, "body_timeout_s must be > 0, got 0"),
        ({"max_image_values": 0}, "max_image_values must be >= 1, got 0"),
        ({"port": 70000}, "port must be in \\[0, 65535\\], got 70000"),
        ({"port": "8000"}, "port must be an integer, got str '8000'"),
        ({"max_wait_ms": -1.0}, "max_wait_ms must be >= 0, got -1.0"),
        ({"verify": "no"}, "verify must be true or false"),
    ],
)
def test_bad_serve_options_are_refused_by_name(options, message):
    with pytest.raises(InputError, match=f"^serve options: {message}"):
        dataclasses.replace(ServeConfig(), **options)


def test_serve_options_from_the_command_line_and_from_python():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = from_namespace(
        parser.parse_args(["--port", "0", "--max-body-bytes", "none", "--allowed-host", "a"])
    )
    assert (config.port, config.max_body_bytes, config.allowed_hosts) == (0, None, ("a",))
    with pytest.raises(InputError, match="serve options: max_queue must be >= 1, got 0"):
        from_namespace(parser.parse_args(["--max-queue", "0"]))
    # a list where the field holds a tuple, and an int where it holds a float, are what callers pass
    assert dataclasses.replace(config, providers=["CPUExecutionProvider"], max_wait_ms=5).max_wait_ms == 5


def test_hatzoo_serve_names_a_bad_option_and_exits_2(capsys):
    from hatzoo.cli import main

    assert main(["serve", "no-such-bundle", "--micro-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: serve options: micro_batch must be >= 1, got 0"
