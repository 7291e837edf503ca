"""gradbook's API's settings: the gateway's (``gradbook_service.gateway.settings``) and what
the model store, the endpoints' limits and the training jobs need, each read from a
``GRADBOOK_*`` environment variable the same way.

The launcher, the gateway personality and the notebook's kernels each build a ``Settings()``;
kernels inherit the launcher's environment, so all three agree (except on the token, which the
launcher hands to the gateway and removes from the kernels' environment).
"""

from __future__ import annotations

from gradbook_service.gateway.settings import GatewaySettings
from traitlets import Bool, Float, Integer, Unicode

from gradbook.store import DEFAULT_ROOT

# Fixed limits of one request, so that none holds a kernel for long or exhausts its memory.
MAX_LAYERS = 16
MAX_PARAMETERS = 1_000_000
MAX_ELEMENTS = 10_000_000  # examples × widest layer (about 80 MB per layer's outputs)
MAX_NUMBER_CHARS = 64  # a number sent as a string; float64 needs at most 24
RESPONSE_FLOOR_BYTES = 2**20  # any request may get an answer this large, whatever its own size


class Settings(GatewaySettings):
    """The service's configuration: the gateway's settings and the API's."""

    api_notebook = Unicode(
        config=True, help="The notebook gradbook's API is served from; unset, the one shipped "
        "with gradbook (notebooks/api.ipynb in a clone). A copy of it, edited, serves more "
        "endpoints beside the API's",
    ).tag(env="GRADBOOK_API_NOTEBOOK", fallback="")
    store = Unicode(
        config=True, help="Model store: a folder, or a postgresql:// URL (gradbook.pgstore) that "
        "several replicas share").tag(
        env="GRADBOOK_STORE", fallback=str(DEFAULT_ROOT))
    max_epochs = Integer(
        min=1, config=True, help="Most epochs one train request may ask for; more get 400"
    ).tag(env="GRADBOOK_MAX_EPOCHS", fallback=10_000)
    max_train_seconds = Float(
        min=0.001,
        config=True,
        help="Most seconds one training request may take, as estimated before it starts by "
        "gradbook_service.app.limits (calibrated on a 2-core machine); longer runs get 400",
    ).tag(env="GRADBOOK_MAX_TRAIN_SECONDS", fallback=60.0)
    max_response_ratio = Float(
        min=1.0,
        config=True,
        help="Most bytes a prediction or gradients answer may have per byte of its request, "
        f"above the first {RESPONSE_FLOOR_BYTES} bytes every request may have; larger answers "
        "get 400 before the work",
    ).tag(env="GRADBOOK_MAX_RESPONSE_RATIO", fallback=64.0)
    lock_timeout = Float(
        min=0.0, config=True,
        help="Seconds a change to a model waits for another change of the same model to finish "
        "before it gets 409",
    ).tag(env="GRADBOOK_LOCK_TIMEOUT", fallback=2.0)
    model_cache = Integer(
        min=1, config=True,
        help="Models each kernel keeps loaded, least recently used dropped first",
    ).tag(env="GRADBOOK_MODEL_CACHE", fallback=16)
    keep_versions = Integer(
        min=1, config=True,
        help="Versions of each model the store keeps readable (predict at a version, roll back "
        "to it), the latest among them; older ones are dropped, oldest first",
    ).tag(env="GRADBOOK_KEEP_VERSIONS", fallback=10)
    max_models = Integer(
        min=1, config=True, help="Most models in the store; creating one more gets 409"
    ).tag(env="GRADBOOK_MAX_MODELS", fallback=100)
    training_worker = Bool(
        config=True, help="1: run a training worker beside the gateway; 0: none (with a "
        "PostgreSQL store, other replicas' workers run the jobs this one accepts)",
    ).tag(env="GRADBOOK_TRAINING_WORKER", fallback=True)
    max_queued_jobs = Integer(
        min=1, config=True, help="Most training jobs waiting to run; one more gets 429",
    ).tag(env="GRADBOOK_MAX_QUEUED_JOBS", fallback=100)
    max_job_bytes = Integer(
        min=1, config=True,
        help="Most bytes of training data kept for the jobs not finished; a job whose data "
        "would go past it gets 429",
    ).tag(env="GRADBOOK_MAX_JOB_BYTES", fallback=64 * 2**20)
    max_job_seconds = Float(
        min=0.001, config=True,
        help="Seconds a training job may run; then it is stopped, commits nothing and fails",
    ).tag(env="GRADBOOK_MAX_JOB_SECONDS", fallback=600.0)
    job_lease = Float(
        min=0.1, config=True, help="Seconds a running job of a PostgreSQL store stays claimed "
        "unless its worker renews the claim (every third of it); then it is ended as failed",
    ).tag(env="GRADBOOK_JOB_LEASE", fallback=10.0)
