"""make playground: a page on 127.0.0.1 to try the served model in a browser (app.py)."""
