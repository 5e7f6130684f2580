"""Webhooks: events of a tenant POSTed, signed, to the endpoints it configured.

    in:   webhook_outbox rows, written by append_event in the transaction of their event
    out:  POST <url>  body {"events": [...]} in event order, headers
              X-Gateway-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
              X-Gateway-Event-Id:  the ids of the events in the body, comma-separated
          then the rows leave the outbox (2xx) or the endpoint backs off (anything else)
          a ``received`` event also carries ``inbound``: the received message, built at send time
          by gateway/inbound/delivery.py (the sender's ``inbound`` hook), fresh attachment URLs each POST

Promises: at-least-once (a crash between a 2xx and its commit sends the batch again: receivers
dedupe on the event id); per-endpoint order (one POST at a time per endpoint, head first; a failing
head holds the rest of that endpoint back, never another endpoint); bounded (outbox per endpoint,
response bytes read, log rows, POSTs in flight). Pure parts: signing.py, urls.py; I/O: sender.py.
"""
