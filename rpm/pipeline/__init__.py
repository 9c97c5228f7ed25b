"""The ingest unit of work: one database transaction per micro-batch.

decode (pure) -> validate (pure) -> in one transaction: load the rule state of
patients the engine has not seen -> insert new readings (duplicates skipped) ->
rule step (in memory, no I/O) -> alert policy (pure) -> alert rows, audit events,
outbox rows, quarantine rows, NOTIFY -> commit. The caller acknowledges the
batch's messages only after ``process`` returns. When the transaction fails, the
engine forgets the batch's patients, so its memory never holds an uncommitted
reading; their state is rebuilt from the database on the retry.

Offers ``IngestPipeline`` (``unit_of_work``), its results ``BatchResult`` and
``MessageResult`` (``results``), the outbox items it writes (``outbox_items``) and
``INGEST_CHANNEL``, the channel it NOTIFYs on commit.
"""

from .attribution import namespaced
from .outbox_items import fhir_push_item, patient_sms_payload
from .results import BatchResult, MessageResult
from .unit_of_work import INGEST_CHANNEL, IngestPipeline

__all__ = [
    "INGEST_CHANNEL",
    "BatchResult",
    "IngestPipeline",
    "MessageResult",
    "fhir_push_item",
    "namespaced",
    "patient_sms_payload",
]
