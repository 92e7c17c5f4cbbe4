"""Security building blocks of the daemon (transport security, content protection)."""
