"""mergeguard.auditor"""
