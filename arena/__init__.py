"""recxplain arena: people compare explanations blind; an admin leaderboard with honest statistics.

- `arena.bundle.export_arena`: the pipeline stage that writes an arena bundle from a run.
- `arena.app.create_app`: the Flask app (votes in SQLite, WAL mode).
- `python -m arena --bundle FOLDER --db FILE`: serve it with waitress.
"""
