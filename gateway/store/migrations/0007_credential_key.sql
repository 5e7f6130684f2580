-- The key of the credentials' keyed password hashes (HMAC-SHA256; see services/credentials.py):
-- 32 random bytes as hex, made once per database. It lives beside the hashes it keys, so a restored
-- backup keeps working, and is as private as they are (the database file is mode 0600).
INSERT OR IGNORE INTO meta (key, value) VALUES ('credential_key', lower(hex(randomblob(32))));
