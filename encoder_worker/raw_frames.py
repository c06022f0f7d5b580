"""How one raw frame is stored: its pixel format and its lossless compression.

Frames come from cameras as rgb24. Stored as yuv420p they take half the bytes, and lose
nothing a yuv420p video keeps: the conversion is the very one the encoder would do (the
same swscale call, same settings), done on the robot instead of on the worker. zstd
and FFV1 then compress the planes losslessly, for more robot CPU (benchmarks/README.md).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import av
import numpy as np
import zstandard
from av.video.reformatter import VideoReformatter

Compression = Literal["none", "zstd", "ffv1"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "zstd", "ffv1")
# zstd level 1: about 3x faster than the default level 3 for a few % more bytes here.
ZSTD_LEVEL = 1


# Bytes per pixel of the packed formats; yuv420p is planar (frame_bytes).
BYTES_PER_PIXEL = {"rgb24": 3, "bgr24": 3, "gray": 1}
PIX_FMTS = (*BYTES_PER_PIXEL, "yuv420p")


def frame_bytes(pix_fmt: str, width: int, height: int) -> int:
    """Bytes of one uncompressed frame of pix_fmt."""
    if pix_fmt == "yuv420p":
        return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    return width * height * BYTES_PER_PIXEL[pix_fmt]


def frame_shape(pix_fmt: str, width: int, height: int) -> tuple[int, ...]:
    """The numpy shape PyAV gives (and takes) for a frame of pix_fmt."""
    if pix_fmt == "yuv420p":
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs an even width and height, not {width}x{height}")
        return (height * 3 // 2, width)
    channels = BYTES_PER_PIXEL[pix_fmt]
    return (height, width) if channels == 1 else (height, width, channels)


class FramePacker:
    """Turns camera frames into stored bytes (pack) and stored bytes back (unpack).

    One per camera and episode: the swscale context and the codec keep their state
    between frames (a new swscale context per frame cost about 1 ms more here).
    """

    def __init__(self, *, width: int, height: int, pix_fmt: str, input_pix_fmt: str,
                 compression: Compression = "none", extradata: bytes | None = None) -> None:
        if pix_fmt not in PIX_FMTS or input_pix_fmt not in PIX_FMTS:
            raise ValueError(f"raw pixel format {pix_fmt!r} / {input_pix_fmt!r}: each must be "
                             f"one of {list(PIX_FMTS)}")
        if pix_fmt != input_pix_fmt and pix_fmt != "yuv420p":
            raise ValueError(f"frames of {input_pix_fmt} can be stored as themselves or as "
                             f"yuv420p, not as {pix_fmt}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"raw compression {compression!r} is not one of {COMPRESSIONS}")
        if compression == "ffv1" and pix_fmt != "yuv420p":
            raise ValueError("ffv1 raw compression stores yuv420p frames: use raw format "
                             "yuv420p (the default for a yuv420p video)")
        self.width, self.height = width, height
        self.pix_fmt, self.input_pix_fmt = pix_fmt, input_pix_fmt
        self.compression = compression
        self.input_shape = frame_shape(input_pix_fmt, width, height)
        self.shape = frame_shape(pix_fmt, width, height)
        self.frame_bytes = frame_bytes(pix_fmt, width, height)
        self._reformatter = VideoReformatter()
        self._zstd_in: zstandard.ZstdCompressor | None = None
        self._zstd_out: zstandard.ZstdDecompressor | None = None
        self._ffv1: av.VideoCodecContext | None = None
        self._extradata = extradata
        self._pts = 0

    @property
    def extradata(self) -> bytes | None:
        """What a reader needs to decode the frames (FFV1's configuration record)."""
        if self.compression == "ffv1" and self._extradata is None:
            self._extradata = self._ffv1_encoder().extradata
        return self._extradata

    # -- writing -----------------------------------------------------------------------

    def pack(self, frame: np.ndarray) -> bytes | memoryview:
        """The bytes stored for one camera frame (converted, then compressed)."""
        stored = self.convert(frame)
        if self.compression == "zstd":
            return self._zstd_compressor().compress(stored.data)
        if self.compression == "ffv1":
            video_frame = av.VideoFrame.from_ndarray(stored, format=self.pix_fmt)
            video_frame.pts = self._pts
            self._pts += 1
            packets = self._ffv1_encoder().encode(video_frame)
            # FFV1 is intra only and without delay: one packet per frame, at once.
            if len(packets) != 1:
                raise RuntimeError(f"FFV1 gave {len(packets)} packets for one frame")
            return bytes(packets[0])
        return stored.data.cast("B")  # flat: len() is its size in bytes

    def convert(self, frame: np.ndarray) -> np.ndarray:
        """The camera frame in the stored pixel format (the encoder's own conversion)."""
        if self.pix_fmt == self.input_pix_fmt:
            return np.ascontiguousarray(frame)
        # Wrapping the array, not copying it: 0.23 ms less per 640x480 frame, same output.
        source = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(frame),
                                                 format=self.input_pix_fmt)
        return self._reformatter.reformat(source, format=self.pix_fmt).to_ndarray()

    # -- reading -----------------------------------------------------------------------

    def unpack(self, data: bytes) -> np.ndarray:
        """A stored frame back as an array of the stored pixel format.

        Raises:
            ValueError: the bytes do not decode to one frame of the right size.
        """
        if self.compression == "zstd":
            data = self._zstd_decompressor().decompress(data, max_output_size=self.frame_bytes)
        elif self.compression == "ffv1":
            try:
                frames = self._ffv1_decoder().decode(av.Packet(data))
            except av.FFmpegError as exc:
                raise ValueError(f"FFV1 frame does not decode: {exc}") from exc
            if len(frames) != 1:
                raise ValueError(f"FFV1 packet gave {len(frames)} frames")
            return frames[0].to_ndarray()
        if len(data) != self.frame_bytes:
            raise ValueError(f"frame has {len(data)} bytes, {self.frame_bytes} expected")
        return np.frombuffer(data, dtype=np.uint8).reshape(self.shape)

    def to_rgb(self, stored: np.ndarray) -> np.ndarray:
        """A stored frame as rgb24 (for comparisons; the encoder takes stored frames)."""
        if self.pix_fmt == "rgb24":
            return stored
        frame = av.VideoFrame.from_ndarray(stored, format=self.pix_fmt)
        return frame.to_ndarray(format="rgb24")

    # -- codecs, made when first needed ----------------------------------------------

    def _zstd_compressor(self) -> zstandard.ZstdCompressor:
        if self._zstd_in is None:
            self._zstd_in = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        return self._zstd_in

    def _zstd_decompressor(self) -> zstandard.ZstdDecompressor:
        if self._zstd_out is None:
            self._zstd_out = zstandard.ZstdDecompressor()
        return self._zstd_out

    def _ffv1_encoder(self) -> av.VideoCodecContext:
        if self._ffv1 is None:
            codec = av.CodecContext.create("ffv1", "w")
            assert isinstance(codec, av.VideoCodecContext)
            codec.width, codec.height, codec.pix_fmt = self.width, self.height, self.pix_fmt
            codec.time_base = Fraction(1, 30)  # unused: frames are stored, not timed
            codec.thread_count = 1  # one camera, one core: the robot has others to do
            codec.gop_size = 1  # every frame decodes alone: a part may start anywhere
            codec.open()
            self._ffv1 = codec
        return self._ffv1

    def _ffv1_decoder(self) -> av.VideoCodecContext:
        if self._ffv1 is None:
            codec = av.CodecContext.create("ffv1", "r")
            assert isinstance(codec, av.VideoCodecContext)
            codec.width, codec.height, codec.pix_fmt = self.width, self.height, self.pix_fmt
            if self._extradata:
                codec.extradata = self._extradata
            self._ffv1 = codec
        return self._ffv1
