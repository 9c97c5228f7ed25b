-- On-call shifts get an id, so the API, the CLI and the dashboard can name one to remove it
-- (docs/alerts.md#on-call-rotas), and say who put them there.
ALTER TABLE on_call ADD COLUMN id bigserial PRIMARY KEY;
ALTER TABLE on_call ADD COLUMN created_by text;
ALTER TABLE on_call ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
