-- DKIM private keys live in the store, beside the other secrets (connector passwords, webhook
-- secrets, the credential key): every node that signs reads them from here, none needs a file.
-- NULL only on rows made before this migration whose file has not been imported yet
-- (gateway/domains/keyimport.py reads each named file once, at start and then every 30 s while any is left).
-- key_path stays: the file an old row named ('' for keys made since), removed with the key.
ALTER TABLE dkim_keys ADD COLUMN private_pem TEXT;
