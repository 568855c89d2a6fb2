"""Per recipe x tool x class confidence thresholds (pure logic and its store; no network)."""
