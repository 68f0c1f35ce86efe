"""Records' documents: their storage keys and file types, and the store that holds them
(app/storage.py: the S3 bucket, or `data_dir/documents` served at signed `/documents/` URLs).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from urllib.parse import quote

from app import storage
from app.settings import Settings

FOLDER = "patients/"  # every document key starts here (the stray sweep lists only these)
URL_PATH = "/documents/"  # the disk store's signed download route (app/routes/records.py)
CONTENT_TYPES = {"pdf": "application/pdf", "png": "image/png", "jpg": "image/jpeg"}
EXTENSIONS = {content_type: extension for extension, content_type in CONTENT_TYPES.items()}
MAX_NAME_CHARS = 120
# Characters no file system or browser takes in a name, and quotes that end the header's.
_UNSAFE = re.compile(r'[\\/:*?"<>|;\x00-\x1f\x7f]+')


def new_key(patient_id: int, extension: str) -> str:
    """A fresh, unguessable storage key for one of a patient's documents."""
    return f"{FOLDER}{patient_id}/{uuid.uuid4().hex}.{extension}"


def create_store(settings: Settings) -> storage.Store:
    """Where documents live: the S3 bucket when S3_BUCKET is set, else the local disk."""
    return storage.create_store(settings, settings.documents_dir, URL_PATH)


def download_name(title: str, record_type: str, content_type: str) -> str:
    """The name a document is saved under: its title and type, e.g. "Blood panel (lab
    result).pdf", with what a file system or a header would refuse taken out."""
    words = f"{title} ({record_type.replace('_', ' ')})"
    stem = " ".join(_UNSAFE.sub(" ", words).split()).strip(". ")[:MAX_NAME_CHARS].rstrip()
    return f"{stem or 'document'}.{EXTENSIONS.get(content_type, 'bin')}"


def content_disposition(filename: str) -> str:
    """`attachment` with the name for every browser (RFC 6266): an ASCII `filename` for
    old ones and the exact UTF-8 name as `filename*`."""
    plain = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    plain = plain.replace("\\", "").replace('"', "") or "document"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
