-- Device state shadows: desired and reported documents under one version.
CREATE TABLE shadows (
    device      TEXT PRIMARY KEY,
    desired     TEXT NOT NULL CHECK (json_valid(desired)),    -- JSON
    reported    TEXT NOT NULL CHECK (json_valid(reported)),   -- JSON
    version     INTEGER NOT NULL,
    desired_at  INTEGER,                                      -- ms since the epoch
    reported_at INTEGER
) WITHOUT ROWID;
