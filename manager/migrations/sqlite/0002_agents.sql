-- Agents enrolled at run time (POST /api/agents) and revocations (DELETE /api/agents/{id}).
-- The secret is the agent's MQTT password and the key of its envelopes and tunnel, so it is
-- kept as it is (a hash could not check an HMAC); a revoked row keeps no secret.
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY NOT NULL,
    secret TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
