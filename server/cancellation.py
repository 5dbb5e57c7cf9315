"""`Cancelled`: getting the model ready was stopped because the server is shutting down.

Its own module, importing nothing, so that each stage that can be stopped (the download in
download.py, the load in engine/loading.py) raises its own subclass and the start-up code catches
them all, without the loader depending on the downloader.
"""

from __future__ import annotations


class Cancelled(Exception):
    """Getting the model ready was stopped because the server is shutting down: nothing failed.
    (Each stage raises its own subclass: `DownloadCancelled`, `LoadCancelled`.)"""
