"""What only a daemon does: reload and drain, sd_notify, logs with redaction, metrics and stats."""
