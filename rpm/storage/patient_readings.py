"""SQL fragments for reading a patient's readings (migration 0041).

On plain PostgreSQL ``readings`` has no index on patient_id: a reading belongs to the patient
its device was bound to at the measured time, so a patient's readings are those of the
devices the patient has had (the ``patient_devices`` view over ``device_bindings``) that carry
the patient's id, and the primary key (device_id, metric, measured_at) finds them device by
device. A hypertable keeps its patient index (0041_reading_row.timescale.sql), which the
planner picks for the same conditions. Every read of a patient's readings adds one of these
conditions; tests/test_query_plans.py checks that none scans readings whole.
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
    first, in one scan for all the patient's devices: on plain PostgreSQL each monthly
    partition's few rows of those devices (the primary key finds them) and a top-N sort; a
    hypertable walks its patient index newest first and stops at ``limit``. ``columns`` from
    ``readings``, unaliased.

    (A scan per device instead keeps the primary key's order, but a device that never sent
    the metric then walks every chunk for nothing: on compressed TimescaleDB chunks, the
    patient page's p50 went from 43 to 101 ms.)"""
    return f"""SELECT {columns} FROM readings
         WHERE {of_patient(patient)} AND readings.metric = {metric}
         ORDER BY readings.measured_at DESC
         LIMIT {limit}"""  # noqa: S608 - fragments of constant SQL
