"""mergeguard.merge"""
