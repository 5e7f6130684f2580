"""Sending domains: names, DKIM keys, the DNS records to publish, and their live verification.

    names.py     normalising domain names (IDNA) and sender addresses
    keys.py      DKIM key generation and key files
    records.py   what a domain must publish, and the BIND zone rendering
    lookup.py    the DNS client (dnspython, configured resolvers, no cache)
    spf.py       SPF evaluation (RFC 7208): one record, includes, the 10-lookup limit
    verify.py    checking every record against DNS, in parallel
    verifier.py  the daemon component that re-verifies domains on an interval
"""
