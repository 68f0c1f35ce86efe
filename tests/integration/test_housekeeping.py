"""Housekeeping jobs run from the SAQ worker: the stray-document sweep is on the daily cron
and, run by the worker, deletes only old objects no record names."""

from __future__ import annotations

import os
import shutil
import time

from saq import Worker

from app.records.documents import FOLDER, create_store, new_key
from app.storage import DiskStore
from db.models import MedicalRecord
from tasks.housekeeping import sweep_documents
from tasks.worker import worker_settings
from tests.integration.world import make_world

PDF = b"%PDF-1.4\n%%EOF\n"


def test_the_sweep_is_on_the_daily_cron():
    crons = [c for c in worker_settings()["cron_jobs"] if c.function is sweep_documents]
    assert len(crons) == 1
    minute, hour, *rest = crons[0].cron.split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"]  # once a day
    assert crons[0].timeout and crons[0].retries > 1


async def run_job(name: str):
    config = worker_settings()
    queue = config.pop("queue")
    config.pop("cron_jobs")
    await queue.connect()
    try:
        job = await queue.enqueue(name)
        config["concurrency"] = 1
        config["shutdown_grace_period_s"] = 0  # the burst is done: nothing to wait for
        worker = Worker(queue, **config, burst=True, max_burst_jobs=1, dequeue_timeout=1)
        await worker.start()
        await job.refresh()
    finally:
        await queue.disconnect()
    return job


async def test_the_worker_sweeps_stray_documents(session, settings, redis):
    shutil.rmtree(settings.documents_dir / "patients", ignore_errors=True)
    world = await make_world(session, settings.secret_key, patients=1)
    patient = world.patients[0]
    store = create_store(settings)  # the worker's store
    assert isinstance(store, DiskStore)
    recorded, lost = new_key(patient, "pdf"), new_key(patient, "pdf")
    stray_old, stray_young = new_key(patient, "pdf"), new_key(patient, "pdf")
    for key in (recorded, stray_old, stray_young):
        await store.put(key, PDF, "application/pdf")
    two_hours_ago = time.time() - 2 * 3600
    for key in (recorded, stray_old):
        os.utime(store.path(key), (two_hours_ago, two_hours_ago))
    rows = [
        MedicalRecord(
            patient_id=patient,
            record_type="note",
            title=title,
            storage_key=key,
            content_type="application/pdf",
            size=len(PDF),
            sha256="0" * 64,
        )
        for title, key in (("kept", recorded), ("lost", lost))
    ]
    session.add_all(rows)
    await session.commit()

    job = await run_job("sweep_documents")

    assert job.status == "complete", job.error
    assert job.result == {"objects_deleted": [stray_old], "rows_without_object": [rows[1].id]}
    left = sorted(key for key, _ in await store.keys(FOLDER))
    assert left == sorted([recorded, stray_young])  # a young object may still be committing
    again = await run_job("sweep_documents")  # idempotent: nothing left to delete
    assert again.result == {"objects_deleted": [], "rows_without_object": [rows[1].id]}
