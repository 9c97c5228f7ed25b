"""SQL fragments for reading a patient's readings (migration 0041).

``readings`` has no index on patient_id: a reading belongs to the patient its device was bound
to at the measured time, so a patient's readings are those of the devices the patient has had
(the ``patient_devices`` view over ``device_bindings``) that carry the patient's id, and the
primary key (device_id, metric, measured_at) finds them device by device. Every read of a
patient's readings adds one of these conditions; tests/test_query_plans.py checks that none
scans readings whole.
"""

from __future__ import annotations


def devices_of(patient: str) -> str:
    """SQL text[] of the devices ``patient`` (an SQL text) has had."""
    return f"ARRAY(SELECT device_id FROM patient_devices WHERE patient_id = {patient})"  # noqa: S608


def devices_of_any(patients: str) -> str:
    """SQL text[] of the devices any of ``patients`` (an SQL text[]) has had."""
    return f"ARRAY(SELECT device_id FROM patient_devices WHERE patient_id = ANY({patients}))"  # noqa: S608


def of_patient(patient: str, table: str = "readings") -> str:
    """SQL true of ``table``'s rows that are readings of ``patient`` (an SQL text)."""
    return f"{table}.patient_id = {patient} AND {table}.device_id = ANY({devices_of(patient)})"


def of_patients(patients: str, table: str = "readings") -> str:
    """SQL true of ``table``'s rows that are readings of any of ``patients`` (an SQL text[])."""
    return (
        f"{table}.patient_id = ANY({patients}) "
        f"AND {table}.device_id = ANY({devices_of_any(patients)})"
    )


def newest(columns: str, patient: str, metric: str, limit: str) -> str:
    """SQL of a patient's ``limit`` newest readings of ``metric`` (SQL rpm_metric), newest
    first: each device's newest by the primary key (an index range read backwards that stops
    at ``limit``), then the newest of those. ``columns`` from ``readings``, unaliased."""
    return f"""SELECT n.* FROM unnest({devices_of(patient)}) AS d(device_id)
         CROSS JOIN LATERAL (
               SELECT {columns} FROM readings
                WHERE readings.device_id = d.device_id AND readings.metric = {metric}
                  AND readings.patient_id = {patient}
                ORDER BY readings.measured_at DESC
                LIMIT {limit}) AS n
         ORDER BY n.measured_at DESC
         LIMIT {limit}"""  # noqa: S608 - fragments of constant SQL
