"""Pure parts of staff sign-in and of the dashboard's charts: no server, no event loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi import Response

from rpm.api import charts
from rpm.api.access import GRANTS, Permission, key_principal, staff_principal
from rpm.auth import (
    Auth,
    AuthConfig,
    FailureLimiter,
    check_new_password,
    hash_password,
    safe_next,
    token_hash,
    verify_password,
)
from rpm.domain import Metric
from rpm.settings import ApiSettings
from rpm.storage import staff_auth
from rules.programs import RuleBook

pytestmark = pytest.mark.pure


def test_passwords_are_argon2id_and_verify() -> None:
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert verify_password(stored, "correct horse battery staple")
    assert not verify_password(stored, "correct horse battery stapler")
    assert not verify_password("not a hash", "anything")


def test_new_passwords_need_fifteen_characters() -> None:
    check_new_password("x" * 15)
    with pytest.raises(ValueError, match="at least 15"):
        check_new_password("x" * 14)
    with pytest.raises(ValueError, match="at most"):
        check_new_password("x" * 1025)


def test_the_limiter_counts_failures_per_key_in_a_sliding_window() -> None:
    limiter = FailureLimiter(max_failures=5, window_s=900)
    key = ("nina", "10.0.0.1")
    for t in range(5):
        assert limiter.retry_after(key, now=float(t)) is None
        limiter.failed(key, now=float(t))
    assert limiter.retry_after(key, now=10.0) == pytest.approx(890.0)  # the first leaves at 900
    assert limiter.retry_after(("nina", "10.0.0.2"), now=10.0) is None  # another address
    assert limiter.retry_after(("other", "10.0.0.1"), now=10.0) is None  # another name
    assert limiter.retry_after(key, now=900.5) is None  # the oldest failure left the window
    limiter.failed(key, now=900.5)  # five in the window again: blocked until t=1 leaves
    assert limiter.retry_after(key, now=900.6) == pytest.approx(0.4)
    limiter.succeeded(key)
    assert limiter.retry_after(key, now=900.7) is None


def test_the_limiter_holds_a_bounded_number_of_keys() -> None:
    limiter = FailureLimiter(max_failures=1, window_s=60, max_keys=3)
    for i in range(5):
        limiter.failed((f"user{i}", "a"), now=0.0)
    assert limiter.retry_after(("user0", "a"), now=1.0) is None  # forgotten, stalest first
    assert limiter.retry_after(("user4", "a"), now=1.0) == pytest.approx(59.0)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dashboard/patients/p1?alert=3", "/dashboard/patients/p1?alert=3"),
        ("https://evil.example/", "/dashboard/"),
        ("//evil.example/dashboard/", "/dashboard/"),
        ("/dashboard//evil.example", "/dashboard/"),
        ("/dashboard/\\evil", "/dashboard/"),
        ("/api/alerts", "/dashboard/"),
        (None, "/dashboard/"),
    ],
)
def test_after_sign_in_only_dashboard_paths(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_session_cookie_is_hardened_and_secure_when_configured() -> None:
    plain = Auth(pool=None, config=AuthConfig.from_settings(ApiSettings()))  # type: ignore[arg-type]
    response = Response()
    plain.set_session_cookie(response, "token")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("rpm_session=token;")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie
    config = AuthConfig.from_settings(ApiSettings(session_cookie_secure=True))
    secure = Auth(pool=None, config=config)  # type: ignore[arg-type]
    response = Response()
    secure.set_session_cookie(response, "token")
    cookie = response.headers["set-cookie"]
    # The __Host- prefix: browsers accept it only Secure, for path /, without a Domain.
    assert cookie.startswith("__Host-rpm_session=token;")
    assert "Secure" in cookie
    assert "Path=/" in cookie
    assert "Domain" not in cookie
    assert token_hash("token") != b"token"
    assert len(token_hash("token")) == 32


def test_chart_thresholds_come_from_the_patients_rules_with_overrides() -> None:
    book = RuleBook.builtin()
    rules = book.rules_for(["hypertension"])
    lines = charts.thresholds_for(rules, Metric.BLOOD_PRESSURE)
    assert [(t.component, t.value) for t in lines] == [
        ("diastolic", 90.0),
        ("diastolic", 120.0),
        ("systolic", 140.0),
        ("systolic", 180.0),
    ]
    assert lines[-1].label == "systolic > 180: Hypertensive crisis"
    crisis = next(r for r in rules if r.id == "bp.hypertensive_crisis")
    lowered = crisis.with_overrides({"systolic_above": 170})
    assert ("systolic", 170.0) in {
        (t.component, t.value) for t in charts.thresholds_for([lowered], Metric.BLOOD_PRESSURE)
    }
    assert charts.thresholds_for(rules, Metric.WEIGHT) == []


def test_chart_text_alternative_and_svg() -> None:
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    points = [(t0 + timedelta(hours=i), {"spo2": 95.0 - i, "pulse": 70.0}) for i in range(3)]
    assert charts.describe(Metric.SPO2, points) == (
        "Oxygen saturation (SpO2): 3 readings from 2026-11-23 08:00 UTC to 2026-11-23 10:00 UTC; "
        "latest 93 %."
    )
    assert charts.describe(Metric.SPO2, []) == "Oxygen saturation (SpO2): no readings."
    svg = charts.render_svg(Metric.SPO2, points, [charts.Threshold("spo2", 88.0, "spo2 < 88")])
    assert svg.startswith(b"<?xml")
    assert b"spo2 &lt; 88" in svg
    assert svg == charts.render_svg(
        Metric.SPO2, points, [charts.Threshold("spo2", 88.0, "spo2 < 88")]
    )  # stable output
    single = charts.render_svg(Metric.WEIGHT, [(t0, {"weight": 80.0})], [])
    assert b"<svg" in single
    assert b"No readings yet" in charts.render_svg(Metric.WEIGHT, [], [])


def test_the_grants_table_gives_each_role_its_permissions() -> None:
    assert GRANTS["admin"] == frozenset(Permission)
    nurse = GRANTS["nurse"]
    assert Permission.PATIENT_DATA in nurse
    assert Permission.ALERT_ACTIONS in nurse
    assert nurse.isdisjoint(
        {
            Permission.ACCESS_ADMIN,
            Permission.ENROLMENT,
            Permission.RULES_PUBLISH,
            Permission.FHIR_PUSH,
        }
    )
    assert GRANTS["scope:fhir:read"] == {Permission.FHIR_READ}
    assert GRANTS["scope:ingest"] == frozenset()


def test_nurses_see_their_teams_admins_and_keys_everyone() -> None:
    nurse = staff_principal("kim", "nurse", ["north"], "token")
    assert (nurse.sees("north"), nurse.sees("south"), nurse.sees(None)) == (True, False, False)
    assert nurse.actor == "staff:kim"
    admin = staff_principal("jo", "admin", [], "session", "csrf")
    assert admin.sees("south")
    assert admin.sees(None)
    now = datetime.now(UTC)
    key = key_principal(
        staff_auth.ApiKeyRecord("ehr", "EHR", ("fhir:read",), None, "staff:jo", now, None)
    )
    assert (key.role, key.actor, key.permissions) == (
        "integration",
        "key:ehr",
        {Permission.FHIR_READ},
    )
    assert key.sees("south")
    unknown_role = staff_principal("x", "janitor", [], "token")
    assert unknown_role.permissions == frozenset()
