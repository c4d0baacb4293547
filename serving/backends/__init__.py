"""Inference backends (imported lazily by serving.load): torch, onnxruntime, tensorrt."""
