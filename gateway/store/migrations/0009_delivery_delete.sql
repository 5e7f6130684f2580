-- `queue delete` of a message a worker is delivering right now: the recipients not in flight go at
-- once; the message is marked and its in-flight recipients go when their attempt is recorded
-- (deleting them under the worker would lose what the remote said, and releasing them would resend).
ALTER TABLE messages ADD COLUMN deleting INTEGER NOT NULL DEFAULT 0;
