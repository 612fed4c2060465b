-- Rate-limit rows are keyed by an HMAC of the address or client IP. The HMAC key was
-- derived from SECRET_KEYS, so anyone holding a database copy and the key could test
-- every IPv4 address (2^32 HMACs, minutes) and learn who signed up. Now each UTC day has
-- a random key of its own, kept here only while that day's windows are open: the
-- retention pass deletes the key, and the rows made with it, once the day is over, after
-- which no stored hash can be tested against anything. An erasure computes the keys of
-- an address from the keys present here, so it finds its rows whatever SECRET_KEYS is.
CREATE TABLE rate_limit_keys (
    day  date  PRIMARY KEY,       -- UTC day whose windows use this key
    key  bytea NOT NULL CHECK (octet_length(key) = 32)
);

-- Rows made with the old key can no longer be found; they are short-lived counters.
DELETE FROM rate_limits;
