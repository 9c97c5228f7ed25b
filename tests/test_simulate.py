"""``rpm simulate`` end to end: a small hand-made plan through the real broker, API and
database, with per-device logins, signed webhooks, malformed payloads, duplicates and
ground truth; and load mode's sustained rate with zero loss."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from rpm.domain import Metric, Reading
from rpm.server import Server
from simulators import readback
from simulators import simulate as simulate_cli
from simulators.encoders import encode
from simulators.enrolment import enrol, stored_device_id
from simulators.runner import Pace, RunOptions, run_plan
from simulators.scenarios import GroundTruth
from simulators.simulate import SimulateOptions, add_parser, target_for, write_outputs
from simulators.traffic import Plan, Send, SimConfig, SimDevice, SimPatient

HTTP_FORMATS = ("tenovi", "withings", "openmhealth", "fhir")
CRISIS = frozenset({"bp.hypertensive_crisis"})
WEIGHT_MISSING = frozenset({"hf.weight_missing"})


def _reading(device: SimDevice, metric: Metric, values: dict[str, float], at: datetime) -> Send:
    r = Reading(device.device_id, metric, values, at, at)
    return Send(
        at=at,
        device_id=device.device_id,
        transport=device.transport,
        payload_format=device.payload_format,
        payload=encode(device.payload_format, [r], device.device_id),
        expect="stored",
        readings=1,
        keys=((metric.value, at),),
    )


def small_plan(now: datetime, patients: int = 24, span_h: float = 48.0) -> Plan:
    """Patients with an MQTT cuff each, every fourth with a webhook cuff in a vendor format,
    two hypertensive crises, a heart-failure scale that goes silent, malformed payloads,
    an unknown device, an implausible value and duplicate resends."""
    end = now + timedelta(seconds=4)
    start = end - timedelta(hours=span_h)

    def at(hours: float) -> datetime:
        return (start + timedelta(hours=hours)).replace(microsecond=0)

    people: list[SimPatient] = []
    sends: list[Send] = []
    truth: list[GroundTruth] = []
    for i in range(patients):
        pid = f"sim{i:03d}"
        devices = [SimDevice(f"{pid}-cuff", "bp_cuff", "canonical", "mqtt")]
        if i % 4 == 1:
            fmt = HTTP_FORMATS[(i // 4) % len(HTTP_FORMATS)]
            devices.append(SimDevice(f"{pid}-v{fmt}", "bp_cuff", fmt, "http"))
        programs: tuple[str, ...] = ("hypertension",)
        if i == 6:
            devices.append(SimDevice(f"{pid}-scale", "scale", "canonical", "mqtt"))
            programs = ("heart_failure",)
        people.append(
            SimPatient(
                pid, f"Sim Patient {i}", f"+1555010{i:02d}", "UTC", "en", programs, tuple(devices)
            )
        )
        for d in devices:
            for k in range(6):
                sends.append(
                    _reading(
                        d,
                        Metric.BLOOD_PRESSURE,
                        {"systolic": 118 + (i + k) % 9, "diastolic": 76 + k % 4},
                        at(2 + k * 7 + (i % 5) * 0.1 + (0.05 if d.transport == "http" else 0)),
                    )
                )
        if i == 6:  # weights, then the scale goes silent after 2 h
            scale = devices[-1]
            for k in range(3):
                sends.append(_reading(scale, Metric.WEIGHT, {"weight": 80.0 + k * 0.1}, at(k)))
            truth.append(GroundTruth(pid, "scale silent", "device_silent", at(2), WEIGHT_MISSING))
    # Crises: one over MQTT (canonical), one over a webhook (withings), 1 h after onset.
    for pid, device, began in (
        ("sim003", people[3].devices[0], 20.0),
        ("sim005", people[5].devices[1], 30.0),
    ):
        sends.append(
            _reading(
                device, Metric.BLOOD_PRESSURE, {"systolic": 204, "diastolic": 126}, at(began + 1)
            )
        )
        truth.append(GroundTruth(pid, "crisis", "hypertensive_crisis", at(began), CRISIS))
    # Duplicates: exact resends of stored payloads, later.
    for original in sends[0:60:15]:
        sends.append(
            Send(
                at=original.at + timedelta(minutes=30),
                device_id=original.device_id,
                transport=original.transport,
                payload_format=original.payload_format,
                payload=original.payload,
                expect="duplicate",
                readings=original.readings,
                keys=original.keys,
            )
        )
    webhook = people[1].devices[1]
    refused = [
        (people[0].devices[0], b'{"metric": "blood_pressure", "values": ', "malformed", at(3)),
        (people[2].devices[0], b"not json at all", "malformed", at(9)),
        (webhook, b'{"truncated": ', "malformed", at(11)),
    ]
    for device, payload, reason, when in refused:
        sends.append(
            Send(
                when,
                device.device_id,
                device.transport,
                device.payload_format,
                payload,
                "quarantined",
                0,
                (),
                reason,
            )
        )
    ghost = SimDevice("ghost-cuff-1", "bp_cuff", "canonical", "mqtt")
    bad = _reading(ghost, Metric.BLOOD_PRESSURE, {"systolic": 120, "diastolic": 80}, at(12))
    sends.append(
        Send(
            bad.at,
            bad.device_id,
            "mqtt",
            "canonical",
            bad.payload,
            "quarantined",
            1,
            bad.keys,
            "unknown_device",
        )
    )
    odd = _reading(
        people[4].devices[0], Metric.BLOOD_PRESSURE, {"systolic": 80, "diastolic": 120}, at(13)
    )
    sends.append(
        Send(
            odd.at,
            odd.device_id,
            "mqtt",
            "canonical",
            odd.payload,
            "quarantined",
            1,
            odd.keys,
            "implausible_value",
        )
    )
    sends.sort(key=lambda s: s.at)
    config = SimConfig(patients=patients, start=start, end=end)
    return Plan(config, tuple(people), tuple(sends), tuple(truth))


async def test_simulate_small_fleet_end_to_end(server: Server, tmp_path: Path) -> None:
    plan = small_plan(datetime.now(UTC))
    formats = {s.payload_format for s in plan.sends if s.transport == "http"}
    assert formats == set(HTTP_FORMATS)
    result = await run_plan(
        plan, target_for(server), RunOptions(Pace(wall_seconds=4.0), progress=False)
    )
    r = result.report
    assert result.connect.connections == 24 + 1 + 1  # each cuff, the scale and the ghost
    assert r.send_failures == 0
    assert r.lost == 0, (r.quarantined, r.false_alerts_by_rule)
    assert (
        r.stored
        == r.expected_stored
        == sum(len(s.keys) for s in plan.sends if s.expect == "stored")
    )
    assert r.unexpected_stored == 0
    assert r.quarantined_expected == {"malformed": 3, "unknown_device": 1, "implausible_value": 1}
    assert r.quarantined == r.quarantined_expected
    assert r.duplicates_expected == 4
    assert r.duplicates == 4
    by_kind = {s.kind: s for s in r.scenarios}
    assert by_kind["hypertensive_crisis"].detected == 2
    # Crisis readings come 1 h of simulated time after onset.
    assert sorted(by_kind["hypertensive_crisis"].delays_s) == [3600, 3600]
    # The scale's silence is found by the missing-data passes on the simulated clock,
    # 36 h after its last weight plus at most one step of their grid (0.5 s of wall time at
    # 43,200x: 6 simulated hours), not only at the end of the replay (46 h after). Each
    # pass waits for the readings sent before its time, so load delays it, never moves it.
    silent = by_kind["device_silent"]
    assert silent.detected == 1, result.observed.alerts
    assert 36 * 3600 <= silent.delays_s[0] <= 42.5 * 3600
    assert r.sensitivity == 1.0
    assert r.ppv == 1.0, r.false_alerts_by_rule
    assert r.publish_to_stored_ms.count == r.stored
    assert r.publish_to_alert_ms.count == 2
    assert r.readings_per_s > 0

    write_outputs(result, tmp_path / "report.json", tmp_path / "report.png")
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["lost"] == 0
    assert doc["sent"] == len(plan.sends)
    assert doc["quarantined_expected"] == doc["quarantined"] == 5
    assert doc["sensitivity"] == 1.0
    assert doc["ppv"] == 1.0
    assert doc["detection_delay_median_s"] == 3600
    assert doc["publish_to_alert_p99_ms"] > 0
    assert doc["readings_per_s"] > 0
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000


async def test_load_mode_sends_at_the_rate_and_loses_nothing(server: Server) -> None:
    plan = small_plan(datetime.now(UTC) - timedelta(seconds=10), patients=12)
    readings = sum(s.readings for s in plan.sends)
    rate = readings / 3.0
    result = await run_plan(plan, target_for(server), RunOptions(Pace(rate=rate), progress=False))
    assert result.report.lost == 0
    assert result.report.stored == result.report.expected_stored > 0
    # Paced, not bursted: the last send is due about readings / rate after the first
    # (not timed: a slow machine only makes it later).
    assert result.send_seconds >= (readings - 1) / rate * 0.9


async def test_each_device_has_its_own_login_and_topic(server: Server) -> None:
    plan = small_plan(datetime.now(UTC), patients=8)
    target = target_for(server)
    async with target.pool.acquire() as conn:
        creds = await enrol(
            conn, target.broker, plan, since=plan.config.start, password_key=target.password_key
        )
    a, b = "sim000-cuff", "sim001-cuff"
    now = datetime.now(UTC).replace(microsecond=0)

    def payload(t: datetime) -> bytes:
        return encode(
            "canonical",
            [Reading(a, Metric.BLOOD_PRESSURE, {"systolic": 121, "diastolic": 79}, t, t)],
            a,
        )

    host, port = target.mqtt_host, target.mqtt_port
    with pytest.raises(aiomqtt.MqttError):  # b's login with a's password
        async with aiomqtt.Client(host, port, username=b, password=creds.mqtt[a], identifier=b):
            pass
    async with aiomqtt.Client(
        host, port, username=a, password=creds.mqtt[a], identifier=a
    ) as client:
        # On b's topic: the broker's ACL drops it. Then one on a's own topic, which must
        # arrive; what a published before it on b's topic would have arrived first.
        await client.publish(
            f"rpm/v1/devices/{b}/readings", payload(now - timedelta(minutes=2)), qos=1
        )
        await client.publish(
            f"rpm/v1/devices/{a}/readings", payload(now - timedelta(minutes=1)), qos=1
        )
    ids = [stored_device_id(a, "mqtt", "canonical"), b]
    async with asyncio.timeout(20):
        while True:
            async with target.pool.acquire() as conn:
                got = await readback.stored(conn, ids, now - timedelta(hours=1))
            if got:
                break
            await asyncio.sleep(0.1)
    assert [k[0] for k in got] == [a]


def test_cli_options_map_to_a_pace() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), Path(".rpm-data"))

    def opts(*argv: str) -> SimulateOptions:
        return SimulateOptions.from_args(parser.parse_args(["simulate", *argv]))

    assert opts().pace == Pace(wall_seconds=60.0)
    assert opts("--days", "2", "--realtime").pace == Pace(wall_seconds=2 * 86400)
    assert opts("--days", "1", "--speed", "1440").pace == Pace(wall_seconds=60.0)
    load = opts("--rate", "500", "--duration", "30")
    assert load.pace == Pace(rate=500.0)
    assert load.duration == 30.0
    with pytest.raises(SystemExit):
        opts("--rate", "500")


async def test_a_bad_scenario_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "cases.yaml"
    bad.write_text("- {name: x, kind: nope}\n")
    opts = SimulateOptions(patients=5, days=1, pace=Pace(wall_seconds=5), scenarios=bad)
    data_dir = tmp_path / "services"
    assert await simulate_cli.run(data_dir, opts, port=0, stop_services=True) == 2
    assert not data_dir.exists()  # no PostgreSQL or Mosquitto was started
