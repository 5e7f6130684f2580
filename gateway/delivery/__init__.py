"""Outbound delivery: claim due recipients, DKIM-sign, route, send, record, retry, bounce.

    scheduler.Scheduler   the component: the dispatcher (claim, budget, sign, hand over) and recording
    routes                a use case's route (direct or a connector), cached
    work                  one work item (a message's recipients for one destination) and its signed bytes
    lanes                 per-destination queues and the tasks that drain them
    attempt               one work item sent within its time budget, replies kept per transaction
    outcomes              replies -> recipient outcomes, and the DSN for failures (pure)
    report                log lines and metrics for recorded outcomes; the stall watch behind /health
    loops                 the loop guard: never connect back to ourselves (or loopback, unless allowed)
    dkim.Signer           RFC 6376 relaxed/relaxed signatures, RSA and Ed25519 through OpenSSL; keys loaded once
    canonical             the relaxed header and body forms, bytes operations (dkimpy's output, measured faster)
    mx.MxResolver         MX -> A/AAAA with RFC 5321 5.1 fallback and RFC 7505 Null MX
    courier               SMTP sessions (reused per MX), the direct route and the SMTP relay
    smtpclient            the SMTP client under courier: RFC 2920 pipelining, STARTTLS, AUTH, timeouts
    connectors            the SendGrid v3 HTTP route and the `connector test` checks
    reply.Reply           a remote's answer, classified delivered / deferred / bounced
    backoff               when a deferred recipient is tried again
    dsn                   RFC 3464 delivery status notifications
"""
