"""`mergeguard demo`: the whole story offline, on tiny models trained for real on generated data."""
