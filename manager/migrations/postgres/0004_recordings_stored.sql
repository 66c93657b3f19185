-- When the day's manifest was last uploaded to [storage] (Unix ms); NULL: only on its box.
ALTER TABLE recordings ADD COLUMN IF NOT EXISTS stored_ms BIGINT;
