"""Registry, DAG, runner, Parquet I/O, schemas and errors: everything a stage does not do itself."""
