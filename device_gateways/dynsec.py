"""Mosquitto's dynamic-security plugin: its config document and its control commands. Pure.

Reference: mosquitto 2.0 ``plugins/dynamic-security/README.md``. Clients, roles and
ACLs live in a JSON file the broker owns; an admin changes them at run time by
publishing commands to ``$CONTROL/dynamic-security/v1`` and reading the answers on
``$CONTROL/dynamic-security/v1/response``. Passwords are stored as PBKDF2-SHA512
with a random 12-byte salt, as the plugin does itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
DEVICE_TOPIC_ROOT = "rpm/v1/devices"
# Mosquitto 2.0's own default for clients it creates; a login costs this many SHA-512 rounds.
PBKDF2_ITERATIONS = 101

ADMIN_ROLE = "rpm-broker-admin"
GATEWAY_ROLE = "rpm-gateway"
FLEET_ROLE = "rpm-fleet"


def device_role(device_id: str) -> str:
    return f"device:{device_id}"


def device_topic_filter(device_id: str) -> str:
    """The only topics a device may publish to."""
    return f"{DEVICE_TOPIC_ROOT}/{device_id}/#"


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


def hashed_client(
    username: str, password: str, roles: Iterable[str], *, salt: bytes | None = None
) -> dict[str, Any]:
    """A client entry of the config document, password hashed as the plugin expects."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return {
        "username": username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": PBKDF2_ITERATIONS,
        "roles": [{"rolename": r} for r in roles],
    }


def initial_config(logins: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The first config document: admin, gateway and (demo) fleet logins with their roles.

    ``logins`` maps a role name (ADMIN_ROLE, GATEWAY_ROLE, FLEET_ROLE) to (username, password).
    """
    roles = {
        ADMIN_ROLE: [
            _acl("publishClientSend", f"{CONTROL_TOPIC}/#"),
            _acl("publishClientSend", CONTROL_TOPIC),
            _acl("publishClientReceive", f"{CONTROL_TOPIC}/#"),
            _acl("subscribePattern", f"{CONTROL_TOPIC}/#"),
        ],
        # The gateway reads every device's readings; it publishes nothing.
        GATEWAY_ROLE: [
            _acl("subscribePattern", "rpm/#"),
            # Several gateways share the device topics: Mosquitto checks a shared
            # subscription's ACL on the whole filter, $share/<group>/ included.
            _acl("subscribePattern", "$share/+/rpm/#"),
            _acl("publishClientReceive", "rpm/#"),
            _acl("subscribePattern", "$SYS/#"),
            _acl("publishClientReceive", "$SYS/#"),
        ],
        # A shared login for simulated fleets in demos: it may publish as any device.
        FLEET_ROLE: [_acl("publishClientSend", f"{DEVICE_TOPIC_ROOT}/#")],
    }
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            hashed_client(user, password, [role]) for role, (user, password) in logins.items()
        ],
        "groups": [],
        "roles": [{"rolename": name, "acls": acls} for name, acls in roles.items()],
    }


def provision_device(device_id: str, password: str) -> list[dict[str, Any]]:
    """Commands giving a device a login that may publish only under its own topic and
    connect only with its own id as client id (the plugin's ``clientid``: a CONNECT with
    another client id is refused before it can take over that client's session)."""
    role = device_role(device_id)
    return [
        {
            "command": "createRole",
            "rolename": role,
            "acls": [_acl("publishClientSend", device_topic_filter(device_id))],
        },
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            "clientid": device_id,
            "roles": [{"rolename": role}],
        },
    ]


def bind_client_id(device_id: str) -> list[dict[str, Any]]:
    """Bind an existing device login to its own client id (logins made before the binding)."""
    return [{"command": "setClientId", "username": device_id, "clientid": device_id}]


def set_password(device_id: str, password: str) -> list[dict[str, Any]]:
    return [{"command": "setClientPassword", "username": device_id, "password": password}]


def disable_device(device_id: str) -> list[dict[str, Any]]:
    """Refuse the device's future logins and disconnect it now."""
    return [{"command": "disableClient", "username": device_id}]


def enable_device(device_id: str) -> list[dict[str, Any]]:
    return [{"command": "enableClient", "username": device_id}]


def kick(username: str, password: str) -> list[dict[str, Any]]:
    """End every session of ``username`` when the plugin has no login of that name (a device
    with a certificate): the plugin disconnects a login's sessions when it deletes it, so
    create a throw-away login and delete it. Nothing is left behind."""
    return [
        {"command": "createClient", "username": username, "password": password},
        {"command": "deleteClient", "username": username},
    ]


def remove_device(device_id: str) -> list[dict[str, Any]]:
    """Delete a device's password login and its role (its sessions end)."""
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def encode(commands: list[dict[str, Any]]) -> bytes:
    return json.dumps({"commands": commands}).encode()


def errors(response: bytes, *, tolerate: Iterable[str] = ()) -> list[str]:
    """Errors in a response document, less those named in ``tolerate`` (e.g. already exists)."""
    doc = json.loads(response)
    allowed = tuple(tolerate)
    out = []
    for r in doc.get("responses", []):
        err = r.get("error")
        if err and not any(t in err for t in allowed):
            out.append(f"{r.get('command')}: {err}")
    return out
