"""TensorRT backend (TensorRT 10+): a serialized engine `X.engine`/`X.plan` plus its `X.engine.json` sidecar.

Buffers are torch CUDA tensors; data-dependent output sizes (N detections) come through an IOutputAllocator, so
no maximum has to be guessed. tensorrt is imported lazily: without it (or without CUDA) loading raises a
one-line UserError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sfdeploy.artefact import config_from_metadata, parse_metadata

from ..predictor import Predictor
from .trt_runtime import Profile, check, execute, fit_to_profile


def _user_error(message: str) -> Exception:
    from sfdeploy.errors import UserError

    return UserError(message)


def sidecar_path(engine: Path) -> Path:
    """`X.engine` -> `X.engine.json` (also `X.plan.json`); falls back to `X.json`."""
    primary = engine.with_name(engine.name + ".json")
    return primary if primary.exists() or not engine.with_suffix(".json").exists() else engine.with_suffix(".json")


class TensorRTPredictor(Predictor):
    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None, **kwargs: Any) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine not found: {path}")
        try:
            import tensorrt as trt
        except ImportError:
            raise _user_error("the tensorrt backend needs the 'tensorrt' package (pip install 'sfdeploy[tensorrt]') "
                              "and an NVIDIA GPU; use the .onnx artefact with --backend onnxruntime instead") from None
        import torch

        if not torch.cuda.is_available():
            raise _user_error("the tensorrt backend needs a CUDA GPU, and torch sees none; "
                              "use the .onnx artefact with --backend onnxruntime")
        side = sidecar_path(path)
        if not side.is_file():
            raise _user_error(f"{path}: metadata sidecar {side.name} is missing (written by `sfdeploy export`)")
        try:
            props = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise _user_error(f"{side}: not valid JSON ({exc})") from None
        md = parse_metadata(props)
        config = config_from_metadata(md, str(side))
        try:
            self.profile = Profile.from_sidecar(props)
        except (ValueError, KeyError, TypeError) as exc:
            raise _user_error(f"{side}: {exc}") from None
        device = device if device and str(device).startswith("cuda") else "cuda"
        super().__init__(config, md, source=str(path), device=device, **kwargs)

        self._trt = trt
        self._torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise _user_error(f"{path}: TensorRT could not deserialize the engine (built with another "
                                  "TensorRT version or GPU?)")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise _user_error(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
            self.stream = torch.cuda.Stream(device=device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.input_names) != 1:
            raise _user_error(f"{path}: expected one input tensor, found {self.input_names}")
        self.input_name = self.input_names[0]
        self.allocator = _make_allocator(trt, torch, device)
        for name in self.output_names:
            check(self.context.set_output_allocator(name, self.allocator), f"set_output_allocator({name})")

    @property  # type: ignore[override]
    def max_side(self) -> int:
        """Images are shrunk (the shared resize: coordinates map back) to the profile's max side at most."""
        return min(self._max_side or self.profile.max, self.profile.max)

    @max_side.setter
    def max_side(self, value: int | None) -> None:
        self._max_side = value

    def _infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        tensor = fit_to_profile(tensor, self.profile)
        with self.lock, torch.cuda.device(self.device):
            x = torch.from_numpy(tensor).to(self.device, non_blocking=False).contiguous()
            # output addresses are placeholders; the allocator supplies the real ones
            execute(self.context, self.input_name, tuple(x.shape), x.data_ptr(), self.output_names,
                    self.allocator.address, self.stream.cuda_stream)
            self.stream.synchronize()
            out = {}
            for name in self.output_names:
                shape = tuple(self.allocator.shapes[name])
                dtype = _torch_dtype(torch, trt.nptype(self.engine.get_tensor_dtype(name)))
                count = int(np.prod(shape)) if shape else 1
                buf = self.allocator.buffers[name]
                flat = buf[: count * torch.empty((), dtype=dtype).element_size()].view(dtype)
                out[name] = flat.reshape(shape).cpu().numpy()
            return out


def _torch_dtype(torch: Any, np_dtype: Any) -> Any:
    return {np.float32: torch.float32, np.float16: torch.float16, np.int64: torch.int64, np.int32: torch.int32,
            np.int8: torch.int8, np.uint8: torch.uint8, np.bool_: torch.bool}[np.dtype(np_dtype).type]


def _make_allocator(trt: Any, torch: Any, device: str) -> Any:
    class TorchOutputAllocator(trt.IOutputAllocator):
        """Grows one torch CUDA byte buffer per output; records shapes TensorRT reports."""

        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def address(self, name: str) -> int:
            if name not in self.buffers:
                self.buffers[name] = torch.empty(256, dtype=torch.uint8, device=device)
            return int(self.buffers[name].data_ptr())

        def reallocate_output(self, tensor_name: str, memory: Any, size: int, alignment: int) -> int:
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.numel() < size:
                buf = torch.empty(max(int(size), 256) * 2, dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buf
            return int(buf.data_ptr())

        def reallocate_output_async(self, tensor_name: str, memory: Any, size: int, alignment: int,
                                    stream: Any = None) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

    return TorchOutputAllocator()
