-- Two-way check-ins (docs/checkins.md): a patient's answers to a questionnaire sent by SMS,
-- the questions waiting for a reply, and the nurse's inbox of replies nobody could parse.

-- One per questionnaire sent to a patient. ``answers`` maps a question's link id to the
-- option chosen, when and by which SMS; ``resource`` is the FHIR R4 QuestionnaireResponse,
-- rebuilt at each answer (in-progress, then completed).
CREATE TABLE checkin_responses (
    id                    bigserial PRIMARY KEY,
    patient_id            text NOT NULL REFERENCES patients(id),
    questionnaire         text NOT NULL,
    questionnaire_version text NOT NULL,
    campaign              text,
    campaign_version      integer,
    language              text NOT NULL,
    status                text NOT NULL CHECK (status IN ('in-progress', 'completed')),
    started_at            timestamptz NOT NULL,
    authored_at           timestamptz,           -- the latest answer
    answers               jsonb NOT NULL DEFAULT '{}',
    resource              jsonb
);
CREATE INDEX checkin_responses_patient ON checkin_responses (patient_id, started_at DESC, id DESC);

-- A question sent and waiting for its reply. A patient has at most one open prompt: a newer
-- one supersedes it. A reply after ``expires_at`` is not an answer (it goes to the inbox).
CREATE TABLE checkin_prompts (
    id           bigserial PRIMARY KEY,
    response_id  bigint NOT NULL REFERENCES checkin_responses(id),
    patient_id   text NOT NULL REFERENCES patients(id),
    link_id      text NOT NULL,
    sms_id       bigint REFERENCES sms_messages(id),
    outbox_id    bigint REFERENCES outbox(id),
    sent_at      timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered', 'superseded')),
    answered_at  timestamptz,
    unparseable  integer NOT NULL DEFAULT 0,     -- replies to it nobody could read
    UNIQUE (response_id, link_id)
);
CREATE UNIQUE INDEX checkin_prompts_one_open ON checkin_prompts (patient_id) WHERE state = 'open';

-- Replies from patients that a person must read: unparseable answers, and free text sent
-- with no check-in open. One item per received SMS (a retried webhook adds none).
CREATE TABLE inbox_items (
    id          bigserial PRIMARY KEY,
    patient_id  text NOT NULL REFERENCES patients(id),
    sms_id      bigint NOT NULL UNIQUE REFERENCES sms_messages(id),
    prompt_id   bigint REFERENCES checkin_prompts(id),
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL,
    handled_at  timestamptz,
    handled_by  text,
    note        text
);
CREATE INDEX inbox_items_open ON inbox_items (created_at, id) WHERE handled_at IS NULL;
CREATE INDEX inbox_items_patient ON inbox_items (patient_id, created_at DESC);
