"""mergeguard.db"""
