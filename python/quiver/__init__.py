"""Quiver from Python: a session over the same engine as the `quiver` CLI, SQL for every
statement the CLI takes, and lazy DataFrames whose rows reach pyarrow, pandas and Polars
through the Arrow C stream interface.

    import quiver
    session = quiver.Session(store="quiver-data")
    df = session.sql("SELECT label, count(*) AS n FROM read_images('photos/') GROUP BY label")
    df.to_pandas()
"""

from quiver._quiver import (ConfigError, DataFrame, QuiverError, Session, SqlError, StoreError,
                            __version__)

__all__ = ["ConfigError", "DataFrame", "QuiverError", "Session", "SqlError", "StoreError",
           "__version__"]
