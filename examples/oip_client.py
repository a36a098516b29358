"""Classify an image through the Open Inference Protocol (KServe v2) with nothing but ``requests``.

Works against ``clead-serve triton`` (Triton speaks the protocol natively) and against any
KServe / Triton deployment of the same models (see docs/deploy.md); no code of this project
is needed on the client side::

    python examples/oip_client.py cat.jpg                              # http://127.0.0.1:8000, model clead
    python examples/oip_client.py --url http://HOST:8000 --model baseline --topk 3 cat.jpg
    python examples/oip_client.py --binary cat.jpg                     # Triton's binary tensor extension

The model takes ``image`` (BYTES, shape [1, 1]: the encoded file) and an optional ``topk``
(INT32, [1, 1]) and returns ``result`` (BYTES, [1, 1]): the JSON answer documented in
docs/serving.md, or the error JSON (``code``, ``type``, ``message``) for a refused image.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
from pathlib import Path

import requests


def infer_json(url: str, model: str, image: bytes, topk: int | None = None, timeout: float = 30) -> dict:
    """Plain JSON: a BYTES element cannot hold binary in JSON, so the file travels as base64 text."""
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [base64.b64encode(image).decode()]}]
    if topk is not None:
        inputs.append({"name": "topk", "datatype": "INT32", "shape": [1, 1], "data": [topk]})
    resp = requests.post(f"{url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=timeout)
    return answer(resp)


def infer_binary(url: str, model: str, image: bytes, topk: int | None = None, timeout: float = 30) -> dict:
    """Triton's binary tensor data extension: a JSON header, then the raw tensor bytes (no base64).

    A BYTES tensor is sent as each element's length (4 bytes, little endian) followed by it."""
    tensor = struct.pack("<I", len(image)) + image
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": len(tensor)}}]
    if topk is not None:
        inputs.append({"name": "topk", "datatype": "INT32", "shape": [1, 1], "data": [topk]})
    header = json.dumps({"inputs": inputs, "outputs": [{"name": "result", "parameters": {"binary_data": False}}]})
    resp = requests.post(f"{url}/v2/models/{model}/infer", data=header.encode() + tensor, timeout=timeout,
                         headers={"Inference-Header-Content-Length": str(len(header.encode())),
                                  "Content-Type": "application/octet-stream"})
    return answer(resp)


def answer(resp: requests.Response) -> dict:
    """The model's JSON answer out of the v2 response (``outputs[0].data[0]``)."""
    if resp.status_code != 200:
        raise RuntimeError(f"{resp.url}: HTTP {resp.status_code}: {resp.text[:300]}")
    body = resp.json()
    result = next(o for o in body["outputs"] if o["name"] == "result")
    return json.loads(result["data"][0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="clead")
    parser.add_argument("--topk", type=int, default=None)
    parser.add_argument("--binary", action="store_true", help="binary tensor extension instead of base64 JSON")
    args = parser.parse_args(argv)
    infer = infer_binary if args.binary else infer_json
    failed = 0
    for path in args.images:
        result = infer(args.url.rstrip("/"), args.model, path.read_bytes(), args.topk)
        failed += "code" in result and "message" in result
        print(json.dumps({"image": str(path), **result}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
