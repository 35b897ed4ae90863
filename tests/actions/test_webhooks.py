"""The pure parts of webhooks: signatures (checked with the Standard Webhooks library), the
retry policy, the circuit breaker, the address guard and the destination checks."""

from __future__ import annotations

import base64
import ipaddress
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from worldflow.actions.webhooks import (
    CLOSED,
    DEAD,
    DELIVERED,
    HALF_OPEN,
    OPEN,
    PENDING,
    AllowList,
    Attempt,
    BreakerPolicy,
    Circuit,
    DestinationError,
    Outcome,
    RetryPolicy,
    address_problem,
    blocked,
    check_headers,
    check_url,
    decide,
    envelope,
    new_secret,
    parse_retry_after,
    postpone,
    secret_key,
    signed_headers,
)
from worldflow.config import ConfigError, load_settings

# The example of the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_specification_and_the_library() -> None:
    headers = signed_headers(secret_key(SPEC_SECRET), SPEC_ID, SPEC_TS, SPEC_BODY)
    assert headers == {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS),
                       "webhook-signature": SPEC_SIGNATURE}  # fmt: skip
    library = Webhook(SPEC_SECRET).sign(SPEC_ID, datetime.fromtimestamp(SPEC_TS, UTC),
                                        SPEC_BODY.decode())  # fmt: skip
    assert library == SPEC_SIGNATURE


def test_generated_secrets_verify_with_the_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 32
    assert secret != new_secret()
    body = envelope("journey.action", 1_700_000_000_123, '{"a":[1,2]}')
    now = int(datetime.now(UTC).timestamp())
    payload = Webhook(secret).verify(body, signed_headers(secret_key(secret), "wh_1", now, body))
    assert payload == {"type": "journey.action", "timestamp": "2023-11-14T22:13:20.123Z",
                       "data": {"a": [1, 2]}}  # fmt: skip


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
    ],
)
def test_unusable_secrets_are_refused_naming_the_field(secret: str, problem: str) -> None:
    with pytest.raises(DestinationError, match=problem) as caught:
        secret_key(secret)
    assert caught.value.field == "secret" and str(caught.value).startswith("secret: ")


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0 ", now) == 0.0
    date = "Tue, 14 Nov 2023 22:15:20 GMT"  # now + 120 s
    assert parse_retry_after(date, now) == pytest.approx(120.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # past: now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_is_full_jitter_capped_and_deterministic_with_a_seed() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=600.0)
    draws = [[policy.backoff_s(n, random.Random(3)) for n in range(1, 30)] for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(11)
    for n in range(1, 40):
        ceiling = min(600.0, 2.0 ** (n - 1))
        samples = [policy.backoff_s(n, rng) for _ in range(50)]
        assert all(0 <= s <= ceiling for s in samples)
        if n > 5:
            assert max(samples) > ceiling / 4  # spread over the whole range, not clustered


def _decide(attempt: Attempt, attempts: int = 1, age_s: float = 0, **policy: float) -> Outcome:
    now = 1_700_000_000_000
    return decide(attempt, attempts, now - int(age_s * 1000), now, RetryPolicy(**policy),
                  random.Random(1))  # fmt: skip


def test_what_each_answer_comes_to() -> None:
    now = 1_700_000_000_000
    assert _decide(Attempt(status=204)).state == DELIVERED
    for retried in (Attempt(status=500), Attempt(status=502), Attempt(status=408),
                    Attempt(status=429), Attempt(error="request failed: refused"),
                    Attempt(error="no answer within 5000 ms", timeout=True)):  # fmt: skip
        outcome = _decide(retried, attempts=3)
        assert outcome.state == PENDING and outcome.failure
        assert now <= outcome.next_attempt_ms <= now + 4000
    dead = _decide(Attempt(status=400, body='{"error":   "unknown\n field  x"}'))
    assert (dead.state, dead.last_status, dead.failure) == (DEAD, 400, False)
    assert dead.last_error == 'HTTP 400: {"error": "unknown field x"}'
    long = _decide(Attempt(status=422, body="x" * 5000))
    assert len(long.last_error) < 220
    moved = _decide(Attempt(status=301, location="https://new.example/hooks"))
    assert moved.state == DEAD and "https://new.example/hooks" in moved.last_error
    refused = _decide(Attempt(refused="url: 10.0.0.1 is a private address"))
    assert (refused.state, refused.failure) == (DEAD, False)


def test_retry_after_is_obeyed_on_429_and_503_only() -> None:
    now = 1_700_000_000_000
    for status in (429, 503):
        outcome = _decide(Attempt(status=status, retry_after_s=90), attempts=1)
        assert outcome.next_attempt_ms == now + 90_000
    other = _decide(Attempt(status=500, retry_after_s=90), attempts=1)
    assert other.next_attempt_ms <= now + 1000


def test_the_retry_window_ends_in_a_dead_delivery() -> None:
    inside = _decide(Attempt(status=500), attempts=4, age_s=3600, window_s=24 * 3600)
    assert inside.state == PENDING
    over = _decide(Attempt(status=500, body="down"), attempts=20, age_s=24 * 3600 - 1,
                   window_s=24 * 3600)  # fmt: skip
    assert over.state == DEAD and over.failure
    assert over.last_error == ("gave up after 20 attempt(s): the retry window of 1d ended; "
                               "last: HTTP 500: down")  # fmt: skip
    # A Retry-After past the window's end is not waited for.
    late = _decide(Attempt(status=429, retry_after_s=7200), attempts=1, window_s=3600)
    assert late.state == DEAD


def test_a_retry_held_for_an_open_circuit_obeys_the_window_too() -> None:
    now = 1_700_000_000_000
    policy = RetryPolicy(window_s=3600)
    pending = _decide(Attempt(status=503, body="down"), attempts=5, age_s=60, window_s=3600)
    held = postpone(pending, now + 30_000, now, 5, now - 60_000, policy)
    assert (held.state, held.next_attempt_ms) == (PENDING, now + 30_000)
    past = postpone(pending, now + 3600_000, now, 5, now - 60_000, policy)
    assert (past.state, past.next_attempt_ms) == (DEAD, now)
    assert past.last_error == ("gave up after 5 attempt(s): the retry window of 1h ended; "
                               "last: HTTP 503: down")  # fmt: skip
    delivered = _decide(Attempt(status=200))
    assert postpone(delivered, now + 3600_000, now, 1, now, policy) == delivered


def test_circuit_opens_probes_reopens_longer_and_closes() -> None:
    policy = BreakerPolicy(threshold=3, cooldown_s=30, max_cooldown_s=100)
    c = Circuit()
    t = 1_000_000
    assert c.admit(t) == (None, None)
    assert c.record(True, t, policy) is None
    assert c.record(False, t, policy) is None  # an answer resets the count
    assert c.record(True, t, policy) is None and c.record(True, t, policy) is None
    assert c.record(True, t, policy) == (CLOSED, OPEN)
    assert (c.state, c.opened_at_ms, c.reopen_at_ms) == (OPEN, t, t + 30_000)
    assert c.admit(t + 29_999) == (0, None)
    assert c.record(True, t + 100, policy) is None  # a request sent before it opened
    assert c.reopen_at_ms == t + 30_000
    assert c.admit(t + 30_000) == (1, (OPEN, HALF_OPEN))
    c.started()
    assert c.admit(t + 30_001) == (0, None)  # one probe at a time
    assert c.record(True, t + 31_000, policy) == (HALF_OPEN, OPEN)
    assert c.reopen_at_ms - c.opened_at_ms == 60_000  # type: ignore[operator]
    assert c.admit(t + 91_000) == (1, (OPEN, HALF_OPEN))
    c.started()
    assert c.record(True, t + 91_000, policy) == (HALF_OPEN, OPEN)
    assert c.reopen_at_ms - c.opened_at_ms == 100_000  # type: ignore[operator]  # capped
    assert c.admit(t + 191_000)[0] == 1
    c.started()
    c.record(None, t + 191_000, policy)  # not sent (refused): the probe slot is free again
    assert c.admit(t + 191_001) == (1, None)
    c.started()
    assert c.record(False, t + 192_000, policy) == (HALF_OPEN, CLOSED)
    assert (c.state, c.failures, c.opened_at_ms, c.reopen_at_ms) == (CLOSED, 0, None, None)
    assert c.admit(t + 192_001) == (None, None)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.251", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("100.64.0.1", "not a public address"),
        ("::1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("fd00::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:169.254.169.254", "a link-local address"),
        ("64:ff9b::a00:1", "a private address"),  # NAT64 of 10.0.0.1
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_categories(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_the_guard_refuses_naming_the_address_unless_allowed() -> None:
    def ips(*values: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(v) for v in values]

    none = AllowList()
    assert "127.0.0.1 is a loopback address" in str(blocked("127.0.0.1", ips("127.0.0.1"), none))
    assert "10.0.0.1 is a private address" in str(blocked("10.0.0.1", ips("10.0.0.1"), none))
    meta = blocked("169.254.169.254", ips("169.254.169.254"), none)
    assert meta is not None and meta.startswith("url: 169.254.169.254 is a link-local address")
    # Every address a name resolves to must be public: one private address is enough.
    mixed = blocked("hooks.example", ips("93.184.215.14", "10.1.2.3"), none)
    assert mixed is not None and "hooks.example (10.1.2.3) is a private address" in mixed
    assert blocked("hooks.example", ips("93.184.215.14"), none) is None
    allow = AllowList.parse(["127.0.0.1", "10.20.0.0/16, hooks.internal", "[::1]"])
    assert blocked("127.0.0.1", ips("127.0.0.1"), allow) is None
    assert blocked("localhost", ips("127.0.0.1", "::1"), allow) is None
    assert blocked("x", ips("10.20.9.9"), allow) is None
    assert blocked("x", ips("10.21.0.1"), allow) is not None
    assert blocked("Hooks.Internal.", ips("192.168.0.9"), allow) is None  # by name
    assert blocked("x", ips("::ffff:127.0.0.1"), allow) is None
    with pytest.raises(ValueError, match="allow: 'host!' is not a host name"):
        AllowList.parse(["127.0.0.1, host!"])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/x", "url: scheme 'ftp' is not allowed"),
        ("example.com/hooks", "url: scheme '(none)' is not allowed"),
        ("https:///hooks", "url: has no host"),
        ("https://user:pw@example.com/", "url: must not hold credentials"),
        ("https://example.com/a b", "url: contains white space"),
        ("https://example.com:99999/", "url: is not a valid URL"),
        ("https://exa$mple.com/", "url: host 'exa$mple.com' is not a valid host name"),
    ],
)
def test_unusable_urls_are_refused_naming_the_field(url: str, problem: str) -> None:
    with pytest.raises(DestinationError) as caught:
        check_url(url)
    assert str(caught.value).startswith(problem)


def test_urls_accepted() -> None:
    assert check_url("https://Hooks.Example.com/a?b=c").port == 443
    assert check_url("http://127.0.0.1:8080/x").port == 8080
    assert check_url("http://[::1]:81/").host == "::1"
    assert check_url("https://bücher.example/").host == "bücher.example"


def test_extra_headers_are_checked() -> None:
    assert check_headers({"Authorization": "Bearer abc", "X-Team": "crm"})
    for headers, problem in [
        ({"webhook-id": "x"}, "headers.webhook-id: is set by Worldflow"),
        ({"Content-Type": "text/plain"}, "headers.Content-Type: is set by Worldflow"),
        ({"Bad Name": "x"}, "headers.Bad Name: is not a valid header name"),
        ({"X-Split": "a\r\nInjected: yes"}, "headers.X-Split: must be a string"),
    ]:
        with pytest.raises(DestinationError) as caught:
            check_headers(headers)
        assert str(caught.value).startswith(problem)


def test_the_allow_list_setting(tmp_path: Path) -> None:
    config = tmp_path / "worldflow.toml"
    config.write_text('webhook_allow = ["127.0.0.1", "10.20.0.0/16"]\n')
    settings = load_settings(config)
    assert settings.webhook_allow == "127.0.0.1,10.20.0.0/16"
    allow = AllowList.parse(settings.webhook_allow)
    assert allow.allows_address(ipaddress.ip_address("10.20.1.1"))
    config.write_text('webhook_allow = "127.0.0.1, -bad-"\n')
    with pytest.raises(ConfigError, match="webhook_allow: '-bad-' is not a host name"):
        load_settings(config)
