"""One module per stage: a plain `run_<stage>(...)` with the logic, and a thin Prefect `@task` adding
retries, caching and MLflow logging. The plain functions run and test without Prefect."""
