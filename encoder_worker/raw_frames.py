"""How one raw frame is stored: its pixel format and its lossless compression.

Frames come from cameras as rgb24. Stored as yuv420p they take half the bytes, and lose
nothing a yuv420p video keeps: the conversion is the very one the encoder would do (the
same swscale call, same settings), done on the robot instead of on the worker. zstd
and FFV1 then compress the planes losslessly, for more robot CPU; MJPEG at its finest
quantiser nearly so, for the raw rate a robot's disk carries at 1080p (benchmarks/README.md,
"Raw transport at 1080p").
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import av
import numpy as np
import zstandard
from av.video.reformatter import VideoReformatter

Compression = Literal["none", "zstd", "ffv1", "mjpeg"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "zstd", "ffv1", "mjpeg")
# Stored through an intra-only codec of FFmpeg's: one packet per frame, at once.
INTRA_CODECS = ("ffv1", "mjpeg")
# zstd level 1: about 3x faster than the default level 3 for a few % more bytes here.
ZSTD_LEVEL = 1
# JPEG's name for yuv420p: its samples are compressed as they are (the range is only a
# label, never applied here), and come back the same planes.
CODEC_PIX_FMT = {"mjpeg": {"yuv420p": "yuvj420p"}}
# MJPEG's quantiser (2, the finest FFmpeg allows): 0.185 dB lost in the final AV1 video
# on real 1080p content (benchmarks/README.md, "Raw transport at 1080p").
MJPEG_QSCALE = 2


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
        if compression in INTRA_CODECS and pix_fmt != "yuv420p":
            raise ValueError(f"{compression} raw compression stores yuv420p frames: use raw "
                             "format yuv420p (the default for a yuv420p video)")
        self.width, self.height = width, height
        self.pix_fmt, self.input_pix_fmt = pix_fmt, input_pix_fmt
        self.compression = compression
        self.input_shape = frame_shape(input_pix_fmt, width, height)
        self.shape = frame_shape(pix_fmt, width, height)
        self.frame_bytes = frame_bytes(pix_fmt, width, height)
        self._reformatter = VideoReformatter()
        self._zstd_in: zstandard.ZstdCompressor | None = None
        self._zstd_out: zstandard.ZstdDecompressor | None = None
        self._codec: av.VideoCodecContext | None = None  # ffv1's or mjpeg's
        self._extradata = extradata
        self._pts = 0

    @property
    def extradata(self) -> bytes | None:
        """What a reader needs to decode the frames (FFV1's configuration record)."""
        if self.compression in INTRA_CODECS and self._extradata is None:
            self._extradata = self._intra_encoder().extradata
        return self._extradata

    # -- writing -----------------------------------------------------------------------

    def pack(self, frame: np.ndarray) -> bytes | memoryview:
        """The bytes stored for one camera frame (converted, then compressed)."""
        stored = self.convert(frame)
        if self.compression == "zstd":
            return self._zstd_compressor().compress(stored.data)
        if self.compression in INTRA_CODECS:
            video_frame = av.VideoFrame.from_ndarray(stored, format=self._codec_pix_fmt)
            video_frame.pts = self._pts
            self._pts += 1
            packets = self._intra_encoder().encode(video_frame)
            # Intra only and without delay: one packet per frame, at once (a codec that
            # held frames back would lose them at the episode's end: never swallowed).
            if len(packets) != 1:
                raise RuntimeError(f"{self.compression} gave {len(packets)} packets for one "
                                   "frame")
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
        elif self.compression in INTRA_CODECS:
            try:
                frames = self._intra_decoder().decode(av.Packet(data))
            except av.FFmpegError as exc:
                raise ValueError(f"{self.compression} frame does not decode: {exc}") from exc
            if len(frames) != 1:
                raise ValueError(f"{self.compression} packet gave {len(frames)} frames")
            if (frames[0].width, frames[0].height) != (self.width, self.height):
                raise ValueError(f"{self.compression} frame is {frames[0].width}x"
                                 f"{frames[0].height}, {self.width}x{self.height} expected")
            return frames[0].to_ndarray()  # the codec's planes as stored, not converted
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

    @property
    def _codec_pix_fmt(self) -> str:
        return CODEC_PIX_FMT.get(self.compression, {}).get(self.pix_fmt, self.pix_fmt)

    def _intra_encoder(self) -> av.VideoCodecContext:
        if self._codec is None:
            codec = av.CodecContext.create(self.compression, "w")
            assert isinstance(codec, av.VideoCodecContext)
            codec.width, codec.height = self.width, self.height
            codec.pix_fmt = self._codec_pix_fmt
            codec.time_base = Fraction(1, 30)  # unused: frames are stored, not timed
            codec.thread_count = 1  # one camera, one core: the robot has others to do
            codec.gop_size = 1  # every frame decodes alone: a part may start anywhere
            if self.compression == "mjpeg":
                codec.options = {"qmin": str(MJPEG_QSCALE), "qmax": str(MJPEG_QSCALE)}
            codec.open()
            self._codec = codec
        return self._codec

    def _intra_decoder(self) -> av.VideoCodecContext:
        if self._codec is None:
            codec = av.CodecContext.create(self.compression, "r")
            assert isinstance(codec, av.VideoCodecContext)
            codec.width, codec.height = self.width, self.height
            codec.pix_fmt = self._codec_pix_fmt
            if self._extradata:
                codec.extradata = self._extradata
            self._codec = codec
        return self._codec
