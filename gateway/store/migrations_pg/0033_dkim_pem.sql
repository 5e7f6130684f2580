-- PostgreSQL counterpart of migrations/0033_dkim_pem.sql: the DKIM private key in the store.
ALTER TABLE dkim_keys ADD COLUMN private_pem TEXT;
