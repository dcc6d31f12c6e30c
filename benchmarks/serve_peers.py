"""The peers of `lightbert serve` in benchmarks/serve.py, as their users write them (each run as its own process).

    python benchmarks/serve_peers.py fastapi --model HF_DIR --port 8001
    python benchmarks/serve_peers.py litserve --model HF_DIR --port 8002

- ``fastapi``: FastAPI + uvicorn + ``transformers.pipeline``, one text per request, a plain (sync) endpoint: what
  the tutorials show.
- ``litserve``: LitServe with a plain ``pipeline`` in ``predict`` and no batching: LitServe's own BERT example.

Both answer ``POST /predict {"text": ...}`` with every label's score (``top_k=None``, the information lightbert
returns) and ``GET /health``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint's annotations as objects.
import argparse
import os

import litserve as ls


def fastapi_server(model: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model, top_k=None, truncation=True)
    app = FastAPI()

    class TextIn(BaseModel):
        text: str

    @app.post("/predict")
    def predict(request: TextIn) -> list:
        return classifier(request.text)

    @app.get("/health")
    def health() -> str:
        return "ok"

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


class HuggingFaceLitAPI(ls.LitAPI):
    """LitServe's BERT example, on a local model directory."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def setup(self, device):
        from transformers import pipeline

        self.pipeline = pipeline("text-classification", model=self.model, top_k=None, truncation=True, device=device)

    def decode_request(self, request):
        return request["text"]

    def predict(self, text):
        return self.pipeline(text)

    def encode_response(self, output):
        return output


def litserve_server(model: str, port: int) -> None:
    server = ls.LitServer(HuggingFaceLitAPI(model), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=["fastapi", "litserve"])
    parser.add_argument("--model", required=True, help="a Hugging Face model directory")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    (fastapi_server if args.peer == "fastapi" else litserve_server)(args.model, args.port)


if __name__ == "__main__":
    main()
