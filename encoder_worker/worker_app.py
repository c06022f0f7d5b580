"""The app that `celery -A encoder_worker worker` finds: settings from FARM_WORKER_* variables."""

from encoder_worker.celery_app import make_app
from encoder_worker.settings import WorkerSettings

settings = WorkerSettings()
app = make_app(settings.broker, settings=settings)
app.conf.farm_worker_settings = settings.model_dump(mode="json")
