-- Recording sessions of liveion nodes ([[nodes]], net4mqtt), synced from their
-- GET /api/recordings and acknowledged there: one row per node, stream and record, the files
-- staying on the node (played through the manager, /api/record/object/@{node}/...).
CREATE TABLE IF NOT EXISTS node_recordings (
    id UUID PRIMARY KEY,
    node TEXT NOT NULL,
    stream TEXT NOT NULL,
    record TEXT NOT NULL,
    mpd_path TEXT NOT NULL,
    year INTEGER NOT NULL,
    month INTEGER NOT NULL,
    day INTEGER NOT NULL,
    status TEXT NOT NULL,
    duration_ms INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS node_recordings_record ON node_recordings (node, stream, record);
CREATE INDEX IF NOT EXISTS node_recordings_stream ON node_recordings (stream);
