"""ECHO's clinician-facing web app (Gradio 6): draft, correct, sign, export.

Import :func:`app.main.build_demo` to embed or test the app and run ``echo-app`` to serve it. Importing
this package loads no model and opens no database.
"""
