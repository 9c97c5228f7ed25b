"""The record as FHIR R4: Observations and other resources as plain JSON (``mapping``,
``resources``), search parameters (``search``), Bundles (``bundles``), the
CapabilityStatement (``capability``), the EHR's endpoint (``ehr``) and the push worker
(``push``)."""
