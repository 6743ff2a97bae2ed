"""The analysis on existing engines, over the run's Parquet store: `dataaudit.engines.duckdb` computes the
record-level parts of the audit (loss curve, coverage, per-class loss, label statistics) in SQL, out of core."""
