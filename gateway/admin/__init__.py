"""The admin socket: JSON lines over a Unix socket between the gateway CLI and the daemon."""
