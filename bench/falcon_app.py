"""The no-kernel floor of ``bench_gateway.py``: gradbook's predict endpoint in a plain WSGI app.

``POST /models/{name}/predict`` does the work gradbook does for that request, minus the gateway
and the kernel: the body is decoded and checked as the personality does it
(``gradbook_service.gateway.body``),
then ``gradbook_service.app.api.ModelAPI.predict`` runs in this process through
``gradbook_service.app.http.serve``, on the
store named by ``GRADBOOK_STORE``. ``GET /healthz`` only says that the worker is up.

    PYTHONPATH=. .venv/bin/python -m gunicorn -w 2 -b 127.0.0.1:8000 --chdir bench falcon_app:app
"""

from __future__ import annotations

import falcon
from gradbook_service.app.api import ModelAPI
from gradbook_service.app.http import Response, json_response, serve
from gradbook_service.app.settings import Settings
from gradbook_service.gateway.body import decode
from gradbook_service.gateway.errors import ServiceError, error_body

from gradbook.store import ModelStore

settings = Settings()
api = ModelAPI(ModelStore(settings.store, cache_size=settings.model_cache), settings)


class Predict:
    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        content_type = req.content_type or ""
        try:
            body = decode(content_type, req.bounded_stream.read(), {})
        except ServiceError as err:
            answer: Response = json_response(error_body(err), err.status)
        else:
            answer = serve(api.predict, {"body": body, "path": {"name": name},
                                         "headers": {"Content-Type": content_type}})
        resp.status = answer.status
        resp.set_headers(answer.headers)
        resp.text = answer.body


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/models/{name}/predict", Predict())
app.add_route("/healthz", Health())
