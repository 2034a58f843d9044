"""mergeguard.benchmarks"""
