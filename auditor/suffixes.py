"""The dataset file suffixes mergeguard reads, in one place: `datasets` opens them, `urls` refuses the
non-parquet ones in a folder at a URL (only parquet is read there)."""

FILE_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".csv", ".parquet", ".txt", ".txt.gz")
# Data that a URL folder may hold but mergeguard does not read there: refused rather than read in part.
NOT_READ_AT_A_URL = (*(suffix for suffix in FILE_SUFFIXES if suffix != ".parquet"), ".arrow")
