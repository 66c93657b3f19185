-- The recording index (liveman's table, plus the agent that holds the files).
CREATE TABLE IF NOT EXISTS recordings (
    id UUID PRIMARY KEY,
    stream TEXT NOT NULL,
    year INTEGER NOT NULL,
    month INTEGER NOT NULL,
    day INTEGER NOT NULL,
    mpd_path TEXT NOT NULL,
    agent TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS recordings_stream_day ON recordings (stream, year, month, day);
