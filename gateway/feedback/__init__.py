"""Deliverability feedback: what receivers tell us about the mail we sent.

    classify  one remote answer (code, enhanced status, text) -> Verdict(kind, reason): the table
              that both delivery (synchronous replies) and DSN parsing use
    dsn       a bounce message (RFC 3464, or a non-standard one from a common MTA) -> one Bounce per
              failed recipient, each classified; an unrecognised report -> kind 'unknown'
    arf       a complaint report (RFC 5965) -> Complaint (feedback type, recipient, the returned
              message's Message-ID, return path and VERP tag)
    phrases   the classifier's phrase tables compiled once, with a literal prefilter (the same
              answers as each row's re.search in order, at a fraction of the cost)
    mime      the small bounded MIME reader dsn and arf share

All three are pure functions on bytes and strings: nothing here reads the store or the clock. What a
verdict does (suppress, count a soft failure, only record) is decided by gateway/services/suppressions.py.
"""
