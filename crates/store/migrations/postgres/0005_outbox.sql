-- The outbound webhook outbox. `status` is pending, delivered or dead; `seq` increases
-- with enqueue order (paging cursor).
CREATE TABLE outbox (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              text COLLATE "C" NOT NULL UNIQUE CHECK (id <> ''),
    endpoint        text COLLATE "C" NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      bigint NOT NULL,   -- ms since the epoch
    next_attempt_at bigint NOT NULL,
    status          text NOT NULL,
    attempts        bigint NOT NULL DEFAULT 0,
    last_error      text,
    pending_since   bigint NOT NULL,
    finished_at     bigint
);

-- what is due
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
-- an endpoint's deliveries by status, newest first; replay
CREATE INDEX outbox_endpoint ON outbox (endpoint, status, seq);
-- pruning delivered ones
CREATE INDEX outbox_finished ON outbox (status, finished_at);
