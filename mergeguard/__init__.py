"""mergeguard: audit merges of fine-tuned LLMs for benchmark contamination, merge them, rank them.

The library is importable piece by piece (`mergeguard.merge`, `mergeguard.auditor`, `mergeguard.benchmarks`,
`mergeguard.evaluation`, `mergeguard.db`); the `mergeguard` command is a thin layer over it. Importing this
package stays cheap: no torch, datasets or lm_eval until a function that needs them runs.
"""

__version__ = "0.1.0"
