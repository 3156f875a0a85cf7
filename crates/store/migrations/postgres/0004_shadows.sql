-- Device state shadows: desired and reported documents under one version.
CREATE TABLE shadows (
    device      text COLLATE "C" PRIMARY KEY,
    desired     jsonb NOT NULL,
    reported    jsonb NOT NULL,
    version     bigint NOT NULL,
    desired_at  bigint,            -- ms since the epoch
    reported_at bigint
);
