"""Records' documents: their storage keys and file types, and the store that holds them
(app/storage.py: the S3 bucket, or `data_dir/documents` served at signed `/documents/` URLs).
"""

from __future__ import annotations

import uuid

from app import storage
from app.settings import Settings

FOLDER = "patients/"  # every document key starts here (the stray sweep lists only these)
URL_PATH = "/documents/"  # the disk store's signed download route (app/routes/records.py)
CONTENT_TYPES = {"pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg"}


def new_key(patient_id: int, extension: str) -> str:
    """A fresh, unguessable storage key for one of a patient's documents."""
    return f"{FOLDER}{patient_id}/{uuid.uuid4().hex}.{extension}"


def create_store(settings: Settings) -> storage.Store:
    """Where documents live: the S3 bucket when S3_BUCKET is set, else the local disk."""
    return storage.create_store(settings, settings.documents_dir, URL_PATH)
