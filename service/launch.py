"""``python -m service.launch`` (``make serve``): serve ``notebooks/api.ipynb`` with the gateway.

On the first start (no store folder yet) the default models are created and trained. Then the
gateway starts in notebook-http mode through ``service.personality`` with a pool of kernels,
each seeded with the notebook's non-endpoint cells. All settings come from ``GRADBOOK_*``
environment variables (``service.settings``). SIGTERM or Ctrl-C stops the gateway and its kernels.
"""

from __future__ import annotations

import os
from pathlib import Path

from kernel_gateway.gatewayapp import KernelGatewayApp
from traitlets.config import Config

from gradbook.store import ModelStore
from service.settings import Settings
from service.training import create_default_models

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "api.ipynb"


def gateway_config(settings: Settings) -> Config:
    config = Config()
    app = config.KernelGatewayApp
    app.api = "service.personality"
    app.seed_uri = str(NOTEBOOK)
    app.ip, app.port, app.port_retries = settings.host, settings.port, 0  # a busy port is an error
    app.prespawn_count = settings.kernels
    app.auth_token = settings.token
    app.answer_yes = True  # Ctrl-C stops at once instead of asking
    # A kernel restarted in place would come back without the notebook's seed cells and fail
    # every request; instead the personality replaces a stopped kernel with a newly seeded one.
    config.KernelManager.autorestart = False
    return config


def main() -> None:
    settings = Settings()
    first_start = not Path(settings.store).exists()
    store = ModelStore(settings.store)
    if first_start:
        print(f"first start: training {', '.join(create_default_models(store))} in {store.root}")
    config = gateway_config(settings)
    # Kernels inherit this environment: they must use the same store, and never see the token.
    os.environ[settings.store_env] = str(store.root.resolve())
    os.environ.pop(settings.token_env, None)
    app = KernelGatewayApp(config=config)
    app.initialize(argv=[])
    print(
        f"gradbook service listening on http://{app.ip}:{app.port} "
        f"({settings.kernels} kernels, store {store.root}, "
        f"token {'required' if app.auth_token else 'off'})",
        flush=True,
    )
    app.start()


if __name__ == "__main__":
    main()
