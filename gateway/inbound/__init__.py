"""Inbound: the other half of the gateway, where customers answer.

What flows in: mail for tenants' channel addresses, catch-alls and the gateway's own return-path,
feedback and unsubscribe addresses, from two doors, the MX listener and the mailbox poller (IMAP,
POP3). What flows out: a spooled row per message and tenant (``store.inbound.spool``, committed
before the MX answers 250 or the poller changes the mailbox), then, from the processor, the
message's kind, thread, bodies, attachments and authentication results, events, and the tenant's
application told (webhook, or a forward through the outbound queue).

    MX listener / poller -> spool (durable) -> 250 / mailbox changed
    processor: authenticate -> classify -> parse MIME -> resolve thread -> store -> events -> downstream

What it promises: nothing received is dropped (an item a stage cannot handle is held with its
reason), tenants never see each other's mail, and a reply is only attached to a conversation of its
own tenant and use case.
"""
