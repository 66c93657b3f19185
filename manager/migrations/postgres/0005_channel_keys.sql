-- Channel keys (LiveGo's), issued and revoked through any manager's API; every manager's RTMP
-- router and key distribution read them here. One key per stream; keys are random, so two
-- streams never share one.
CREATE TABLE IF NOT EXISTS channel_keys (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    agent TEXT,
    PRIMARY KEY (app, name)
);

-- A version per table the managers share ('keys', 'agents'), raised in the same transaction
-- as every change: each manager polls these few rows to learn that another one changed
-- something. A key table's version is also what agents compare (docs/protocol.md §14).
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);
