"""The record-level analysis in DuckDB, out of core: for runs whose records do not fit in memory.

    from dataaudit.engines.duckdb import analyze_records
    result = analyze_records("runs/exp1", memory_limit="1GB")
    result.curve, result.coverage, result.classes, result.class_loss, result.label_issues

It reads only the records files the run's manifests list (never a glob: an epoch in progress, a killed
session's leftovers or a file copied in by hand do not count), in the order `load_run` reads them, and
computes in SQL what the checks read of the records:

- the loss curve per complete epoch (`checks.curves.epoch_losses`),
- coverage per epoch (`run.coverage_table`, less the order hash),
- per class: distinct samples by their last label, share, draws, and mean loss per epoch (`class_imbalance`),
- per sample over a window of epochs: area under the margin, mean loss, last label, share of epochs predicted
  as that label, suggested label and consistency; and the candidate mislabeled samples by the labels check's
  rule, confident learning included where the run stores full probabilities (`duckdb_labels`).

DuckDB holds at most `memory_limit` in memory and spills the rest to `temp_directory`, so the store may be many
times larger than memory. Needs the optional extra: pip install 'dataaudit[duckdb]'.

Not computed here: confident learning on top-k probabilities, the order hash of each epoch's draws,
the checks of the sketch, step and layer tables and of the validation split, probes; nor are the files' values
checked as `load_run` checks them (epochs of their partition, labels below num_classes).
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dataaudit import store

# A file's rows are ordered by (file, row): file * 2^40 + row fits a BIGINT for 2^23 files of 2^40 rows.
ROW_SHIFT = 1 << 40
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


@dataclass(frozen=True)
class RecordAnalysis:
    """What `analyze_records` computed; every table is small (per epoch, per class) but `samples`.

    curve : per complete epoch: epoch, loss (mean of the finite losses), accuracy (pred == label where
        label >= 0), recorded (rows), nonfinite (rows with a non-finite loss), nonfinite_share.
    coverage : per committed epoch: epoch, seen, unique, missing, duplicates, complete.
    classes : per class with a sample or a draw: label, samples (distinct ids whose last label it is),
        share (of those samples), draws (recorded rows with that label).
    class_loss : (epochs, classes) mean loss, NaN losses skipped; `class_imbalance.per_class_loss`'s table.
    samples : per sample (see `duckdb_labels.label_statistics`), or the Parquet file it was written to.
    label_issues : the candidate mislabeled samples, most suspicious first: sample_id, label,
        suggested_label, aum.
    labels : how they were judged: window, n_issues, estimated_noise_rate, model_agreement,
        lift_over_prior, consistency, evidence, unfit_classes, rule, and skipped or note when relevant.
    settings : memory_limit, threads, files read and their rows.
    """

    curve: pd.DataFrame
    coverage: pd.DataFrame
    classes: pd.DataFrame
    class_loss: pd.DataFrame
    samples: pd.DataFrame | Path
    label_issues: pd.DataFrame
    labels: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    """The records files of one split that a run's manifests list, in `load_run`'s order.

    files : (epoch, path) pairs, by epoch, then as listed (rank 0's manifest first).
    complete : epoch -> whether every rank finished its pass.
    optional : the optional columns (target_entropy, target_prob) some file holds.
    probs_width : the number of classes of the full probabilities (`probs`) every file stores, else None.
    """

    files: list[tuple[int, Path]]
    complete: dict[int, bool]
    dataset_size: int | None
    num_classes: int | None
    task: str
    soft_targets: bool
    probs_stored: bool
    optional: frozenset[str]
    probs_width: int | None = None  # classes of the full probabilities every file stores (None: not all do)


def analyze_records(run_dir: str | Path, *, split: str = "train", memory_limit: str = "1GB",
                    temp_directory: str | Path | None = None, threads: int | None = None,
                    window: tuple[int, int] | None = None, samples_path: str | Path | None = None,
                    confident_learning: bool = True) -> RecordAnalysis:
    """The record-level analysis of the run in `run_dir`, computed by DuckDB out of core.

    Parameters
    ----------
    run_dir : a run directory written by `dataaudit.Tracker`.
    split : the split analysed.
    memory_limit : DuckDB's memory limit ("1GB", "512MB"...); what does not fit spills to `temp_directory`.
    temp_directory : where DuckDB spills, and keeps its working tables (default: a fresh temporary
        folder, removed afterwards).
    threads : DuckDB's threads (default: one per core).
    window : (first, last) epochs, inclusive, of the per-sample label statistics; default: the labels
        check's own choice (the window where the low-margin samples stand out best).
    samples_path : write the per-sample table to this Parquet file instead of returning it (large runs).
    confident_learning : run the labels check's confident learning where the run stores full probabilities
        (the in-memory check's rule; about 3x the time of the rest); False: the margin rule alone.
    """
    from dataaudit.engines import duckdb_labels

    listing = list_records(run_dir, split)
    own_temp = temp_directory is None
    if own_temp:
        work = Path(tempfile.mkdtemp(prefix="dataaudit-duckdb-"))
    else:  # the caller's folder: a fresh one inside it, removed afterwards
        Path(temp_directory).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="work-", dir=temp_directory))
    try:
        con = connect(work, memory_limit=memory_limit, threads=threads)
        try:
            records_view(con, listing)
            curve = epoch_curve(con, listing)
            coverage = coverage_table(con, listing)
            classes, class_loss = class_tables(con, listing)
            labels, samples, issues = duckdb_labels.label_statistics(
                con, listing, window=window, samples_path=samples_path, confident_learning=confident_learning)
        finally:
            con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {"memory_limit": memory_limit, "threads": threads, "files": len(listing.files),
                "rows": int(coverage["seen"].sum())}
    return RecordAnalysis(curve, coverage, classes, class_loss, samples, issues, labels, settings)


def duckdb_module():
    """The duckdb package, or an ImportError naming the extra that installs it."""
    try:
        import duckdb
    except ImportError:
        raise ImportError("dataaudit.engines.duckdb needs the duckdb package: pip install 'dataaudit[duckdb]'") \
            from None
    return duckdb


def connect(work: Path, *, memory_limit: str = "1GB", threads: int | None = None):
    """An in-memory DuckDB database limited to `memory_limit`, spilling to `work`: its working tables too, which
    an in-memory database evicts to the temporary folder under pressure (a database file wrote them twice, log
    and checkpoint: a third slower at 10^6 x 20)."""
    duckdb = duckdb_module()
    if not isinstance(memory_limit, str) or not _MEMORY.match(memory_limit.strip()):
        raise ValueError(f"analyze_records needs memory_limit as a size such as '1GB' or '512MB'; got {memory_limit!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"analyze_records needs threads to be a positive integer or None; got {threads!r}")
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit.strip()}'")
    con.execute(f"SET temp_directory = {_quote(str(work / 'spill'))}")
    con.execute("SET preserve_insertion_order = false")  # lets large aggregates stream and spill
    if threads is not None:
        con.execute(f"SET threads = {threads}")
    return con


def list_records(run_dir: str | Path, split: str = "train") -> Listing:
    """The records files of `split` that the manifests of `run_dir` list (rank 0's and every
    manifest.rankN.json), checked as `load_run` checks them: manifests readable, listed files present,
    each file's schema that of a records table. Raises RunFormatError naming the file."""
    run_dir = Path(run_dir)
    manifests = store.read_run_manifests(run_dir)
    meta = manifests[0]
    complete: dict[int, bool] = {}
    for entry in (e for m in manifests for e in m["epochs"] if e["split"] == split):
        complete[entry["epoch"]] = complete.get(entry["epoch"], True) and bool(entry["complete"])
    listed = []
    for manifest in manifests:
        for rel in manifest["files"]:
            m = store.LISTED_FILE.match(rel)
            if m["table"] == "records" and m["split"] == split and int(m["epoch"]) in complete:
                listed.append((int(m["epoch"]), len(listed), run_dir / rel))
    files = [(epoch, path) for epoch, _, path in sorted(listed, key=lambda t: t[:2])]
    names: set[str] = set()
    widths = set()  # of the full probabilities each file stores (None: none stored)
    for _, path in files:
        schema = store.read_schema(path, "records")
        names |= set(schema.names)
        widths.add(schema.field("probs").type.list_size if "probs" in schema.names else None)
    info = meta["splits"].get(split) or {}
    task = meta.get("task") or {}
    return Listing(files=files, complete=dict(sorted(complete.items())),
                   dataset_size=info.get("dataset_size") if info.get("id_source", "index") == "index" else None,
                   num_classes=meta.get("num_classes"), task=task.get("kind") or "classification",
                   soft_targets=bool(task.get("soft_targets")), probs_stored=bool(names & {"probs", "topk_probs"}),
                   optional=frozenset(names & {"target_entropy", "target_prob"}),
                   probs_width=widths.pop() if len(widths) == 1 else None)


def records_view(con, listing: Listing) -> None:
    """Create the view `records`: every listed file's rows, with `k`, their order (file, then row), and the
    loss as `load_run` reads it (less the soft targets' entropy, where the losses are cross-entropies)."""
    optional = "".join(f", {c}" for c in sorted(listing.optional)) + (", probs" if listing.probs_width else "")
    if listing.files:
        # One scan of the listed files: a UNION ALL of one scan per file ran out of memory at 320 files
        # (10^6 x 20) where the single scan spills. A file's place in the order comes from a join on its name.
        paths = [str(path) for _, path in listing.files]
        con.execute("CREATE TABLE files AS SELECT unnest(?::VARCHAR[]) AS filename, unnest(range(?)) AS f",
                    [paths, len(paths)])
        con.execute(f"""
            CREATE VIEW raw_records AS
            SELECT f * {ROW_SHIFT} + file_row_number AS k, epoch::BIGINT AS epoch, sample_id::BIGINT AS sample_id,
                   recorded, loss, margin, greatest(label, -1)::BIGINT AS label,
                   greatest(pred, -1)::BIGINT AS pred{optional}
            FROM read_parquet({_quote_list(paths)}, file_row_number = true, filename = true,
                              hive_partitioning = false, union_by_name = true)
            JOIN files USING (filename)""")
    else:  # no committed records: an empty view of the same columns
        con.execute("CREATE VIEW raw_records AS SELECT 0::BIGINT AS k, 0::BIGINT AS epoch, 0::BIGINT AS sample_id, "
                    "true AS recorded, 0::FLOAT AS loss, 0::FLOAT AS margin, 0::BIGINT AS label, 0::BIGINT AS pred"
                    + "".join(f", NULL::FLOAT AS {c}" for c in sorted(listing.optional)) + " WHERE false")
    loss = "loss"
    if "target_entropy" in listing.optional:
        entropy = "CASE WHEN isnan(target_entropy) OR target_entropy IS NULL THEN 0::FLOAT ELSE target_entropy END"
        # a cross-entropy is at least the targets' entropy (float32 rounding aside): then the loss less it
        share = con.execute(f"SELECT avg(CASE WHEN loss >= ({entropy}) - 0.001 THEN 1.0 ELSE 0.0 END) "
                            "FROM raw_records WHERE recorded AND isfinite(loss)").fetchone()[0]
        if share is not None and share >= 0.99:
            loss = f"greatest(loss - ({entropy}), 0::FLOAT)"
    con.execute(f"CREATE VIEW records AS SELECT * REPLACE ({loss} AS loss) FROM raw_records")


def epoch_curve(con, listing: Listing) -> pd.DataFrame:
    """Per complete epoch (see `RecordAnalysis.curve`); the mean loss is over the finite losses."""
    epochs = [e for e, done in listing.complete.items() if done]
    columns = ["epoch", "loss", "accuracy", "recorded", "nonfinite", "nonfinite_share"]
    if not epochs:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype({"epoch": "int64"})
    out = con.execute(f"""
        SELECT epoch, avg(loss) FILTER (WHERE isfinite(loss)) AS loss,
               avg(CASE WHEN pred = label THEN 1.0 ELSE 0.0 END) FILTER (WHERE label >= 0) AS accuracy,
               count(*) AS recorded, count(*) FILTER (WHERE NOT coalesce(isfinite(loss), false)) AS nonfinite
        FROM records WHERE recorded AND epoch IN ({_ints(epochs)}) GROUP BY epoch ORDER BY epoch""").df()
    out["nonfinite_share"] = out["nonfinite"] / out["recorded"]
    return out.astype({"epoch": "int64", "loss": "float64", "accuracy": "float64", "recorded": "int64",
                       "nonfinite": "int64"})[columns]


def coverage_table(con, listing: Listing) -> pd.DataFrame:
    """Per committed epoch (see `RecordAnalysis.coverage`); all draws count, recorded or not. Without a dataset
    size (explicit ids), the dataset is every id drawn in any epoch."""
    drawn = con.execute("""
        SELECT epoch, sum(n) AS seen, count(*) AS "unique"
        FROM (SELECT epoch, sample_id, count(*) AS n FROM records GROUP BY epoch, sample_id)
        GROUP BY epoch""").df().set_index("epoch")
    universe = listing.dataset_size
    if universe is None:
        universe = con.execute("SELECT count(*) FROM (SELECT DISTINCT sample_id FROM records)").fetchone()[0]
    rows = []
    for epoch, complete in listing.complete.items():
        seen, unique = (int(drawn.at[epoch, "seen"]), int(drawn.at[epoch, "unique"])) if epoch in drawn.index \
            else (0, 0)
        rows.append({"epoch": epoch, "seen": seen, "unique": unique, "missing": max(int(universe) - unique, 0),
                     "duplicates": seen - unique, "complete": complete})
    return pd.DataFrame(rows, columns=["epoch", "seen", "unique", "missing", "duplicates", "complete"]).astype(
        {"epoch": "int64", "seen": "int64", "unique": "int64", "missing": "int64", "duplicates": "int64",
         "complete": bool})


def class_tables(con, listing: Listing) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(classes, class_loss) of the recorded rows (see `RecordAnalysis`); empty on a regression run."""
    empty = (pd.DataFrame({"label": pd.Series(dtype="int64"), "samples": pd.Series(dtype="int64"),
                           "share": pd.Series(dtype="float64"), "draws": pd.Series(dtype="int64")}),
             pd.DataFrame(index=pd.Index([], dtype="int64", name="epoch"), columns=pd.Index([], name="label")))
    if listing.task == "regression":
        return empty
    # a sample's class is its last label: latest epoch, then latest row there (class_imbalance's last_records)
    samples = con.execute("""
        SELECT label, count(*) AS samples FROM (
            SELECT arg_max(label, k) AS label FROM records WHERE recorded GROUP BY sample_id)
        WHERE label >= 0 GROUP BY label""").df()
    draws = con.execute("SELECT label, count(*) AS draws FROM records WHERE recorded AND label >= 0 "
                        "GROUP BY label").df()
    if not len(draws):
        return empty
    classes = samples.merge(draws, on="label", how="outer").fillna(0).astype("int64").sort_values("label")
    classes.insert(2, "share", classes["samples"] / max(int(classes["samples"].sum()), 1))
    loss = con.execute("""
        SELECT epoch, label, avg(loss) FILTER (WHERE NOT isnan(loss)) AS loss
        FROM records WHERE recorded AND label >= 0 GROUP BY epoch, label""").df()
    wide = loss.pivot(index="epoch", columns="label", values="loss").sort_index().sort_index(axis=1)
    wide = wide.astype("float64")
    wide.index = pd.Index(wide.index.astype("int64"), name="epoch")
    wide.columns = pd.Index(wide.columns.astype("int64"), name="label")
    return classes.reset_index(drop=True), wide


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_list(texts: list[str]) -> str:
    return "[" + ", ".join(_quote(t) for t in texts) + "]"


def _ints(values) -> str:
    return ", ".join(str(int(v)) for v in values)
