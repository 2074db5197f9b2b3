"""Decode a jpg beton's batches on the GPU: gathered JPEG bytes in, ``(images, labels)`` out.

The loader's image pipeline is :class:`~jit_ffcv.gpu_gather.GatherJpegBytes` (bytes, lengths and
the CPU path's flip bits); :class:`GpuDecodeLoader` hands each batch's bytes to a
:class:`BatchDecoder`, then mirrors and lays the images out on the decode device in one pass
(:func:`finish`): contiguous NCHW uint8, or JiT's float ``x / 255 * 2 - 1``.
Order, flips and labels are the CPU path's; pixels are too with :class:`CpuDecoder` (the
stand-in used in tests), and within the fidelity table's numbers with :class:`NvImageCodecDecoder`.

Buffer safety: the bytes live in the loader's reused slots, valid until the consumer has taken
the second batch after them. :meth:`GpuDecodeLoader.__iter__` decodes a batch before asking for
the next one, and the GPU decoder runs on the consumer's current stream, so the release event
the loader records on that stream (see :mod:`jit_ffcv.epoch`) also covers the decoder's reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch

from jit_ffcv.gpu_gather import FLIP, LENGTH
from jit_ffcv.jpeg import decode_flags, decode_rgb, describe

__all__ = ["BACKENDS", "BatchDecoder", "CpuDecoder", "GpuDecodeLoader", "NvImageCodecDecoder", "finish",
           "load_nvimgcodec"]

EXTRA_HINT = 'pip install "jit-ffcv[gpu]"'
#: backends of :class:`NvImageCodecDecoder`: the JPEG engines (NVJPG) with the CUDA decoder as fallback,
#: the engines alone, the CUDA decoder alone
BACKENDS = ("auto", "hardware", "cuda")


class BatchDecoder(Protocol):
    """Decodes a batch of JPEG byte buffers into one ``(B, H, W, 3)`` uint8 tensor on :attr:`device`."""

    device: torch.device

    def decode(self, payloads: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
        """Decode ``payloads`` (each an ``H x W`` RGB JPEG) into ``(len(payloads), height, width, 3)`` uint8."""
        ...


class CpuDecoder:
    """The CPU path's decode (libjpeg-turbo, Pillow's pixels) behind the :class:`BatchDecoder` interface.

    The stand-in for tests on machines without CUDA, and the reference of the fidelity table.
    """

    def __init__(self, jpeg_decode: str = "accurate") -> None:
        self.device = torch.device("cpu")
        self.flags = decode_flags(jpeg_decode)

    def decode(self, payloads: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
        """Decode each payload into one row of a fresh ``(B, H, W, 3)`` array (a RuntimeError names a bad one)."""
        out = np.empty((len(payloads), height, width, 3), dtype=np.uint8)
        for i, payload in enumerate(payloads):
            status = decode_rgb(payload, out[i], self.flags)
            if status != 0:
                raise RuntimeError(f"JPEG {i} of the batch could not be decoded: {describe(status)}")
        return torch.from_numpy(out)


def load_nvimgcodec() -> Any:
    """Import ``nvidia.nvimgcodec``; an ImportError naming the extra that installs it if missing."""
    try:
        from nvidia import nvimgcodec
    except ImportError:
        raise ImportError(f"GPU decode needs nvImageCodec: {EXTRA_HINT} (nvidia-nvimgcodec-cu12 or -cu13, "
                          f"matching torch.version.cuda)") from None
    return nvimgcodec


def check_cuda(device: torch.device) -> None:
    """Refuse, in one line, a device that is not CUDA or a process without CUDA."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"GPU decode needs a CUDA device and a CUDA build of torch; got device={str(device)!r}, "
                         f"torch.cuda.is_available()={torch.cuda.is_available()}: decode on the CPU instead")


class NvImageCodecDecoder:
    """nvImageCodec's batched JPEG decode straight into GPU memory, handed to torch without a copy.

    ``backend``: ``auto`` (the hardware JPEG engines, CUDA decoder as fallback), ``hardware`` or
    ``cuda`` alone (the fidelity table measures each). ``fancy_upsampling=True`` interpolates
    subsampled chroma as libjpeg-turbo and Pillow do (nvImageCodec's own default is off).
    """

    def __init__(self, device: str | torch.device = "cuda", *, backend: str = "auto",
                 fancy_upsampling: bool = True, cpu_threads: int = 1) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        nvimgcodec = load_nvimgcodec()
        check_cuda(self.device)
        kinds = {"auto": ["HW_GPU_ONLY", "GPU_ONLY"], "hardware": ["HW_GPU_ONLY"], "cuda": ["GPU_ONLY"]}[backend]
        self.backend = backend
        self._nvimgcodec = nvimgcodec
        # the beton's JPEGs are RGB and carry no orientation: interleaved RGB, EXIF ignored, as the CPU decode
        self.params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               allow_any_depth=False, sample_format=nvimgcodec.SampleFormat.I_RGB)
        self._pending: deque[tuple[torch.cuda.Event, list[Any]]] = deque()
        self._decoder = nvimgcodec.Decoder(
            device_id=self.device.index, max_num_cpu_threads=int(cpu_threads),
            backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind)) for kind in kinds],
            options=f":fancy_upsampling={int(bool(fancy_upsampling))}")

    def _keep_until_read(self, images: list[Any], stream: torch.cuda.Stream) -> None:
        """Hold nvImageCodec's images until the stream has copied them (freed sooner, their memory may be reused)."""
        event = torch.cuda.Event()
        event.record(stream)
        self._pending.append((event, images))
        while self._pending and self._pending[0][0].query():
            self._pending.popleft()

    def decode(self, payloads: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
        """Decode on the current stream of :attr:`device`; the result is ordered on that stream."""
        stream = torch.cuda.current_stream(self.device)
        streams = [self._nvimgcodec.CodeStream(payload) for payload in payloads]  # no copy: they view the slot
        images = self._decoder.decode(streams, params=self.params, cuda_stream=stream.cuda_stream)
        failed = [i for i, image in enumerate(images) if image is None]
        if failed:
            raise RuntimeError(f"nvImageCodec ({self.backend} backend) could not decode JPEGs {failed[:5]} of the "
                               f"batch; try backend='auto' or 'cuda', or decode on the CPU")
        tensors = [torch.as_tensor(image, device=self.device) for image in images]
        batch = torch.stack(tensors)
        self._keep_until_read(images, stream)
        if batch.shape[1:] != (height, width, 3):
            raise RuntimeError(f"nvImageCodec decoded {tuple(batch.shape[1:])} images, the beton stores "
                               f"({height}, {width}, 3)")
        return batch


def finish(hwc: torch.Tensor, flips: torch.Tensor, output: str = "uint8") -> torch.Tensor:
    """Mirror the images whose flip bit is set and lay them out as contiguous NCHW (uint8 or JiT's float)."""
    mirrored = torch.where(flips.view(-1, 1, 1, 1), hwc.flip(2), hwc)
    nchw = mirrored.permute(0, 3, 1, 2).contiguous()
    if output == "float":  # the same arithmetic as jit_ffcv.ops.ToUnitRange
        return torch.div(nchw, 255).mul_(2).sub_(1)
    return nchw


class GpuDecodeLoader:
    """Wraps a :class:`~jit_ffcv.loader.JiTLoader` whose image pipeline is ``GatherJpegBytes``.

    Yields ``(images, labels)``: images on the decoder's device, ``(B, 3, H, W)`` uint8 or float;
    labels as the loader's label pipeline delivers them. ``set_epoch``, ``sampler``, ``len``,
    ``state_dict`` and ``load_state_dict`` are the wrapped loader's (resume works unchanged).
    """

    batch_sampler = None  # Lightning looks at .sampler instead

    def __init__(self, loader: Any, decoder: BatchDecoder, *, image_size: tuple[int, int],
                 output: Literal["uint8", "float"] = "uint8") -> None:
        if output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
        self.loader = loader
        self.decoder = decoder
        self.height, self.width = (int(x) for x in image_size)
        self.output = output

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler view (Lightning calls its ``set_epoch``)."""
        return self.loader.sampler

    @property
    def batch_size(self) -> int:
        """Samples per batch (the wrapped loader's)."""
        return int(self.loader.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next."""
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapped loader's resume position (decoding adds no state)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the wrapped loader."""
        self.loader.load_state_dict(state)

    def decode_batch(self, payload: np.ndarray, info: np.ndarray) -> torch.Tensor:
        """Decode one gathered batch and finish it; reads ``payload`` and ``info`` before returning."""
        lengths = info[:, LENGTH]
        if lengths.size and int(lengths.max()) > payload.shape[1]:
            raise ValueError(f"a JPEG of {int(lengths.max())} bytes does not fit GatherJpegBytes(max_bytes="
                             f"{payload.shape[1]}): build it with max_payload_bytes(beton)")
        views = [payload[i, : lengths[i]] for i in range(len(lengths))]
        hwc = self.decoder.decode(views, self.height, self.width)
        flips = torch.from_numpy(info[:, FLIP] != 0).to(hwc.device, non_blocking=False)
        return finish(hwc, flips, self.output)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        """Batches of the next epoch; each is decoded before the next one is asked for (slot rule)."""
        for (payload, info), labels in self.loader:
            yield self.decode_batch(np.asarray(payload), np.asarray(info)), labels
