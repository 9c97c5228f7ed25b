"""MQTT shared subscriptions on the broker the tests run (Mosquitto 2.0, the local
services), as several gateways use them (docs/deploy.md): members of one group split a
topic's messages, each message to one member; and a member that dies holding messages it
has not acknowledged gets them again when it comes back with its persistent session.

The members are paho clients (MQTT 3.1.1) with manual acknowledgement: like the gateway
(device_gateways/mqtt.py, MQTT 5), they acknowledge only when told to; gateways themselves in
a group are tests/test_active_active.py's. They log in with a login of
this module's own, made through the broker admin, whose role may subscribe to the shared
filter: Mosquitto checks a shared subscription's ACL on the whole filter, `$share/<group>/`
included, so a role allowed `rpm/#` alone is refused (SUBACK 0x80).
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import aiomqtt
import paho.mqtt.client as paho
import pytest

from device_gateways.broker_admin import BrokerAdmin, BrokerAdminConfig
from rpm.local_endpoints import ServiceEndpoints
from simulators.transports import drop_session
from tests.helpers import eventually

LOGIN = ("rpm-test-share-member", "share-member-secret")


@pytest.fixture(scope="module")
async def member_login(services: ServiceEndpoints) -> tuple[str, str]:
    """A login like the gateway's whose role also allows the shared filter."""
    admin = BrokerAdmin(
        BrokerAdminConfig(
            services.mqtt_host,
            services.mqtt_port,
            services.mqtt_admin_username,
            services.mqtt_admin_password,
        )
    )
    role = "rpm-test-share-member"
    acls = [
        {"acltype": acltype, "topic": topic, "allow": True}
        for topic in ("rpm/#", "$share/+/rpm/#")
        for acltype in ("subscribePattern", "publishClientReceive")
    ]
    await admin.apply(
        [
            {"command": "createRole", "rolename": role, "acls": acls},
            {
                "command": "createClient",
                "username": LOGIN[0],
                "password": LOGIN[1],
                "roles": [{"rolename": role}],
            },
        ],
        tolerate=("already exists",),
    )
    return LOGIN


class Member:
    """One gateway-like member of a shared subscription: the gateway login, a persistent
    session under ``client_id``, QoS 1, acknowledging each message only if ``ack``."""

    def __init__(self, services: ServiceEndpoints, client_id: str, *, ack: bool) -> None:
        self.services = services
        self.client_id = client_id
        self.got: list[bytes] = []
        self.ack = ack
        self._subscribed = threading.Event()
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        client.username_pw_set(*LOGIN)
        client.manual_ack_set(True)
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    def _on_subscribe(
        self, _c: paho.Client, _u: object, _mid: int, codes: list[paho.ReasonCode], _p: object
    ) -> None:
        self.granted = [c.value for c in codes]
        self._subscribed.set()

    def _on_message(self, client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        self.got.append(message.payload)
        if self.ack:
            client.ack(message.mid, message.qos)

    def start(self, topic_filter: str) -> None:
        self.client.connect(self.services.mqtt_host, self.services.mqtt_port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(10), "no SUBACK"
        assert self.granted == [1], f"SUBACK {self.granted}"  # QoS 1 granted

    def kill(self) -> None:
        """Die as `kill -9` would: the socket closes, no DISCONNECT, nothing acknowledged."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    async def drop_session(self) -> None:
        """End the persistent session, so the broker queues nothing more for it."""
        await drop_session(self.services.mqtt_host, self.services.mqtt_port, *LOGIN, self.client_id)


@pytest.fixture
def group() -> tuple[str, str]:
    """A share group and a device topic of this test's own: (topic, shared filter)."""
    n = uuid.uuid4().hex[:10]
    topic = f"rpm/v1/devices/shared-{n}/readings"
    return topic, f"$share/rpm-test-{n}/{topic}"


async def publish(services: ServiceEndpoints, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client(
        services.mqtt_host,
        services.mqtt_port,
        username=services.mqtt_device_username,
        password=services.mqtt_device_password,
        identifier=f"rpm-test-pub-{uuid.uuid4().hex[:8]}",
    ) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


@pytest.mark.usefixtures("member_login")
async def test_members_of_a_share_group_split_the_messages(
    services: ServiceEndpoints, group: tuple[str, str]
) -> None:
    topic, shared = group
    members = [
        Member(services, f"rpm-test-share-{i}-{uuid.uuid4().hex[:6]}", ack=True) for i in (1, 2)
    ]
    try:
        for m in members:
            await asyncio.to_thread(m.start, shared)
        sent = [b"reading-%d" % i for i in range(40)]
        await publish(services, topic, sent)

        async def all_arrived() -> bool:
            return sum(len(m.got) for m in members) >= len(sent)

        await eventually(all_arrived)
        got = [p for m in members for p in m.got]
        assert sorted(got) == sorted(sent)  # each exactly once
        assert all(m.got for m in members)  # both took a share
    finally:
        for m in members:
            await asyncio.to_thread(m.stop)
            await m.drop_session()


@pytest.mark.usefixtures("member_login")
async def test_a_killed_members_unacknowledged_messages_come_back_with_its_session(
    services: ServiceEndpoints, group: tuple[str, str]
) -> None:
    """A member takes its share and acknowledges nothing (its unit of work never commits),
    then dies. The other member keeps acknowledging. When the dead one returns under its
    client id, the broker hands it every message it held: nothing held is lost, and between
    the two members every message was delivered."""
    topic, shared = group
    dying_id = f"rpm-test-dying-{uuid.uuid4().hex[:6]}"
    dying = Member(services, dying_id, ack=False)
    other = Member(services, f"rpm-test-other-{uuid.uuid4().hex[:6]}", ack=True)
    back: Member | None = None
    try:
        await asyncio.to_thread(dying.start, shared)
        await asyncio.to_thread(other.start, shared)
        sent = [b"reading-%d" % i for i in range(40)]
        await publish(services, topic, sent)

        async def all_arrived() -> bool:
            return len(dying.got) + len(other.got) >= len(sent)

        await eventually(all_arrived)
        held = list(dying.got)
        assert held, "the dying member took no share"
        await asyncio.to_thread(dying.kill)

        back = Member(services, dying_id, ack=True)
        await asyncio.to_thread(back.start, shared)

        async def redelivered() -> bool:
            return set(held) <= set(back.got) if back is not None else False

        await eventually(redelivered)
        assert set(other.got) | set(back.got) == set(sent)
    finally:
        await asyncio.to_thread(other.stop)
        if back is not None:
            await asyncio.to_thread(back.stop)
        for member in (dying, other):
            await member.drop_session()
