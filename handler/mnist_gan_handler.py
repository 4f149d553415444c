"""TorchServe handler: a JSON request in, generated 28x28 digits out as compact JSON or a PNG.

The request contract (fields, limits, error messages) lives in request_contract.py;
TorchServe requires this file to define exactly one class, the handler.
"""
import hashlib
import json
import logging
import os
from collections import OrderedDict
from http import HTTPStatus
from typing import Any, Optional, Union

import numpy as np
import onnxruntime
import torch
from ts.torch_handler.base_handler import BaseHandler

from generator import METADATA_FILE, ONNX_FILE, Generator, onnx_feeds, sample_latent, sample_noise
from request_contract import (DECIMALS, JSON_TYPE, BadRequest, GenerationRequest, Hand, adapt_kservev2_envelope,
                              encode_answer, error_body, header, is_v2_inputs, parse_request, parse_v2_request, v2_error,
                              v2_outputs)
from search import SEARCH_ONNX_FILE, find_hand

logger = logging.getLogger(__name__)

RUNTIMES = ("onnxruntime", "torch")
HANDS_KEPT = 128  # hands a worker remembers (a vector of 100 numbers each), by upload, the least recent forgotten


def _keep_unless_per_request(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Backend received inference")


def set_request_logs(enabled: bool) -> None:
    """Turns the worker's per-request stdout lines on or off.

    TorchServe's worker prints three lines per request: "Backend received inference at",
    and the HandlerTime and PredictionTime metrics. Every line wakes the Java frontend's log
    reader, which competes with the request for the cores. Off, the frontend still keeps its own
    latency metrics and access log; warnings and errors pass.
    """
    logging.getLogger("ts.metrics.caching_metric").setLevel(logging.NOTSET if enabled else logging.WARNING)
    root = logging.getLogger()
    root.removeFilter(_keep_unless_per_request)
    if not enabled:
        root.addFilter(_keep_unless_per_request)


def lower_priority(nice: int) -> None:
    """Every thread of this worker at CPU priority `nice` (19: the lowest), those it starts later too: the scheduler
    then gives the cores to everyone else first. Raising a nice value needs no privilege."""
    if nice <= 0:
        return
    try:
        threads = [int(task) for task in os.listdir("/proc/self/task")]  # Linux: a nice value is per thread
    except OSError:
        threads = [0]
    for thread in threads:
        os.setpriority(os.PRIO_PROCESS, thread, nice)


class DigitGANHandler(BaseHandler):
    """Thin BaseHandler subclass: BaseHandler.handle runs preprocess -> inference -> postprocess."""

    def initialize(self, context: Any) -> None:
        # Small tensors: one thread per worker avoids OpenMP spin-waiting, and a fixed
        # thread count keeps a seed's images bit-identical across workers.
        setting = os.environ.get("GAN_WORKER_THREADS", "1")
        if not setting.isdigit() or int(setting) < 1:  # say which setting is wrong, not int()'s message
            raise ValueError(f"GAN_WORKER_THREADS must be a whole number of threads, 1 or more: got {setting!r}")
        threads = int(setting)
        torch.set_num_threads(threads)
        # SciPy's OpenBLAS (the search for a hand) starts a thread per core when it loads, at the first hand, unless
        # told otherwise: two workers' spinning threads then slow each other's searches severalfold.
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, METADATA_FILE)) as f:
            self.metadata = json.load(f)
        super().initialize(context)
        # model-config.yaml's `handler:` section (packed into the .mar)
        options = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        # Two routes to one archive (config.properties registers it twice): the archive's own name draws digits, and
        # `hand_route` finds hands. None: one route does both.
        self.hand_route = options.get("hand_route")
        self.digits_route = context.manifest["model"]["modelName"]
        self.serves_hands = context.model_name == self.hand_route
        if self.serves_hands:
            lower_priority(int(options.get("hand_nice", 0)))
        set_request_logs(bool(options.get("request_logs", False)))
        runtime = options.get("runtime", "onnxruntime")
        if runtime not in RUNTIMES:
            raise ValueError(f"model-config.yaml: handler: runtime must be one of {RUNTIMES}, got {runtime!r}")
        # ONNX Runtime on a CPU, where it runs these small convolutions faster than PyTorch (docs/serving.md);
        # PyTorch on a GPU, or when the config asks for it. Both run the same trained weights.
        on_cpu_onnx = runtime == "onnxruntime" and self.device.type == "cpu"
        self.session = self._onnx_session(model_dir, ONNX_FILE, threads) if on_cpu_onnx else None
        # The search for a hand in ONNX Runtime too (its steps several times faster than PyTorch's autograd), where
        # the archive has it: an unconditional generator's has not, nor an archive from before it was made.
        searches = on_cpu_onnx and (self.hand_route is None or self.serves_hands) and os.path.exists(
            os.path.join(model_dir, SEARCH_ONNX_FILE))
        self.search_session = self._onnx_session(model_dir, SEARCH_ONNX_FILE, threads) if searches else None
        adapt_kservev2_envelope()  # with service_envelope=kservev2: protocol error bodies, 400 not 503
        self.v2 = False
        self.rng = torch.Generator()  # reseeded for every request
        self.found_hands: OrderedDict[tuple[str, bytes], torch.Tensor] = OrderedDict()  # by (digits, upload's digest)
        logger.info("loaded %s generator (%s) on %s", self.metadata.get("preset"), self.metadata["model"],
                    "ONNX Runtime" if self.session else f"PyTorch ({self.device})")

    @staticmethod
    def _onnx_session(model_dir: str, name: str, threads: int) -> onnxruntime.InferenceSession:
        path = os.path.join(model_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name} is not in the model archive: rebuild it with `make archive`, "
                                    "or set `handler: runtime: torch` in model-config.yaml")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # With GAN_WORKER_THREADS > 1, idle threads sleep instead of spinning: on these vCPUs a spinning
        # thread takes the core that the frontend and the other worker need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str) -> Generator:
        # BaseHandler builds the model class with no arguments; the trained arguments are in the metadata.
        model = Generator(**self.metadata["model"])
        state = torch.load(model_pt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model

    def preprocess(self, data: list[dict]) -> list[Union[GenerationRequest, BadRequest]]:
        self.v2 = is_v2_inputs(data)
        if self.v2:  # TorchServe's kservev2 envelope: `data` is the input tensors of one request
            try:
                return [parse_v2_request(data, self.model.num_classes, self._route)]
            except BadRequest as error:
                return [error]
        if len(data) > 1:
            logger.info("handling a batch of %d requests", len(data))
        requests = []
        for idx, row in enumerate(data):
            headers = self.context.request_processor[idx].get_request_properties()
            try:
                requests.append(parse_request(row, self._content_type(headers), header(headers, "accept"),
                                              self.model.num_classes, self._route))
            except BadRequest as error:
                requests.append(error)
        return requests

    def _route(self, has_hand: bool) -> None:
        """BadRequest for a request that came to the wrong route: with two, a hand goes to the hand route, and nothing
        else does."""
        if self.hand_route is None or has_hand == self.serves_hands:
            return
        if has_hand:
            raise BadRequest(f"'hand' goes to /predictions/{self.hand_route} (a search for a hand takes a worker tens of "
                             f"milliseconds: hands have their own queue and workers there, so they never delay anyone "
                             f"else's digits)")
        raise BadRequest(f"this route writes in an uploaded hand and needs 'hand'; ask for a seed's hands at "
                         f"/predictions/{self.digits_route}")

    @staticmethod
    def _content_type(headers: dict) -> Optional[str]:
        body = headers.get("body")  # the worker's per-parameter entry: {"content-type": ...}
        if isinstance(body, dict) and body.get("content-type"):
            return body["content-type"]
        return header(headers, "content-type")

    @torch.inference_mode()
    def generate(self, request: GenerationRequest) -> tuple[np.ndarray, dict]:
        """count x 28 x 28 float32 images, or count x len(digits) x 28 x 28 for a number, and the answer's other
        fields (with a hand: the upload as prepared, the model's copy of it and their mean squared error); the
        same request gives bit-identical images.

        Each request gets its own forward pass: the same inputs in a differently shaped
        batch differ in the last bits, which rounding can expose.
        """
        if request.hand is not None:
            return self._write_in_hand(request)
        # One reseeded generator, not a new one per request: a count=1 request is mostly
        # per-call overhead, paid with cold caches.
        rng = self.rng.manual_seed(request.seed)
        if request.digits is None:
            return self._draw(*sample_latent(self.model, request.count, rng, request.digit)).round(DECIMALS), {}
        # A number: hand i is the seed's i-th noise vector. Each distinct digit is drawn for every hand in one
        # pass shaped as a {"digit": d} request's, so hand i's d is that request's image i, bit for bit.
        return self._write(sample_noise(self.model, request.count, rng), request.digits), {}

    def _write(self, hands: torch.Tensor, number: str) -> np.ndarray:
        """hands x len(number) x 28 x 28: each hand (noise vector) writing the number, rounded to DECIMALS."""
        drawn = {d: self._draw(hands, torch.full((len(hands),), int(d))) for d in set(number)}
        return np.stack([drawn[d] for d in number], axis=1).round(DECIMALS)

    def _find_hand(self, hand: Hand) -> torch.Tensor:
        """find_hand on the upload, or the hand this worker found for the same upload lately: a person writing one
        number after another in their hand waits once."""
        key = (hand.digits, hashlib.sha256(hand.images.tobytes()).digest())  # a digest: the upload itself is not kept
        if key in self.found_hands:
            self.found_hands.move_to_end(key)
        else:
            self.found_hands[key] = find_hand(self.model, torch.from_numpy(hand.images), [int(d) for d in hand.digits],
                                              session=self.search_session)
            if len(self.found_hands) > HANDS_KEPT:
                self.found_hands.popitem(last=False)
        return self.found_hands[key]

    def _write_in_hand(self, request: GenerationRequest) -> tuple[np.ndarray, dict]:
        """The number written by the hand found from the upload, with the upload as prepared, the model's copy and
        their mean squared errors (one digit: 28 x 28 and one error; k digits: k x 28 x 28 and k errors)."""
        upload = request.hand
        hand = self._find_hand(upload)[None]
        images = self._write(hand, request.digits)
        copies = self._write(hand, upload.digits)[0]  # each drawn as in a number, so a digit both show is the same
        prepared = upload.images.round(DECIMALS)
        errors = np.mean((copies.astype(np.float64) - prepared) ** 2, axis=(1, 2)).round(6)  # of what the answer shows
        if upload.single:
            return images, {"hand": {"image": prepared[0], "copy": copies[0], "error": float(errors[0])}}
        return images, {"hand": {"image": prepared, "copy": copies, "error": errors}}

    def _draw(self, noise: torch.Tensor, labels: Optional[torch.Tensor]) -> np.ndarray:
        """The generator's images for these inputs, N x 28 x 28 float32."""
        if self.session is not None:
            images = self.session.run(None, onnx_feeds(noise, labels))[0]
        else:
            labels = None if labels is None else labels.to(self.device)
            images = self.model(noise.to(self.device), labels).cpu().numpy()
        return images.reshape(-1, 28, 28)

    def inference(self, requests: list) -> list[Union[tuple[np.ndarray, dict, str], BadRequest]]:
        return [r if isinstance(r, BadRequest) else (*self.generate(r), r.answer_type) for r in requests]

    def postprocess(self, outputs: list) -> list:
        if self.v2:  # the envelope writes the v2 response; it names outputs after context.input_names
            if isinstance(outputs[0], BadRequest):
                return [v2_error(self.context, str(outputs[0]), outputs[0].status)]
            images, fields, _ = outputs[0]
            tensors = v2_outputs(images, fields)
            self.context.input_names = list(tensors)
            return list(tensors.values())  # the envelope's outputs, one per name
        responses = []
        for idx, output in enumerate(outputs):  # each request gets its own status and format
            if isinstance(output, BadRequest):
                self.context.set_response_status(output.status, HTTPStatus(output.status).phrase, idx)
                self.context.set_response_content_type(idx, JSON_TYPE)
                responses.append(error_body(str(output), output.status))
            else:
                images, fields, answer_type = output
                self.context.set_response_content_type(idx, answer_type)
                responses.append(encode_answer(images, answer_type, fields))
        return responses
