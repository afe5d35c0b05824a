"""Partner webhook fan-out: subscriptions, signed delivery, per-partner isolation."""
