"""The paper's comparisons as resumable plans: ``ragsam experiment NAME``."""
