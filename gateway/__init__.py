"""gateway: a self-hosted, multi-tenant SMTP/IMAP mail gateway daemon."""

__version__ = "0.1.0"
